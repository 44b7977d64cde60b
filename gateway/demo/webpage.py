"""The demo's browser page: MQTT over WebSocket from a browser, through the gateway's wss
listener, with MQTT.js (the npm package ``mqtt``, installed by ``scripts/setup.sh`` into
``.npm/``, never copied into the repository). Served by the demo from its admin listener at
``/demo/``: the page subscribes to ``demo/#``, publishes a greeting, and shows every message
it receives (what ``mosquitto_pub`` sends through the gateway appears in it)."""

from __future__ import annotations

import html
import json
import os

# Where the bundle is looked for: MQTTGW_MQTTJS, else .npm/ of the current directory and of
# the checkout this package runs from.
_BUNDLE = os.path.join(".npm", "node_modules", "mqtt", "dist", "mqtt.min.js")


def mqtt_js() -> str | None:
    """The path of MQTT.js's browser bundle, or None when it is not installed."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path in (
        os.environ.get("MQTTGW_MQTTJS", ""),
        os.path.join(os.getcwd(), _BUNDLE),
        os.path.join(here, _BUNDLE),
    ):
        if path and os.path.isfile(path):
            return path
    return None


def page(wss_url: str) -> bytes:
    """The page, connecting to ``wss_url`` (MQTT 5 over WebSocket, no client certificate)."""
    url = html.escape(wss_url, quote=True)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mqttgw demo: MQTT over WebSocket</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
#status {{ font-weight: bold; }}
li {{ font-family: monospace; }}
</style>
</head>
<body>
<h1>MQTT over WebSocket through mqttgw</h1>
<p>This page connects to <code>{url}</code> with MQTT.js, subscribes to
<code>demo/#</code> and shows what arrives. Publish with the demo's
<code>mosquitto_pub</code> line and watch it appear.</p>
<p>Status: <span id="status">loading MQTT.js</span></p>
<ul id="messages"></ul>
<script src="mqtt.min.js"></script>
<script>
(function () {{
  var status = document.getElementById("status");
  var list = document.getElementById("messages");
  if (typeof mqtt === "undefined") {{
    status.textContent = "MQTT.js is missing (run sh scripts/setup.sh with npm installed)";
    return;
  }}
  status.textContent = "connecting";
  var client = mqtt.connect({json.dumps(wss_url)}, {{
    protocolVersion: 5,
    clientId: "browser-" + Math.random().toString(16).slice(2, 10),
    reconnectPeriod: 2000
  }});
  client.on("connect", function () {{
    status.textContent = "connected";
    client.subscribe("demo/#", function () {{
      client.publish("demo/browser", "hello from the browser");
    }});
  }});
  client.on("message", function (topic, payload) {{
    var item = document.createElement("li");
    item.className = "message";
    item.textContent = topic + " " + payload.toString();
    list.appendChild(item);
  }});
  client.on("error", function (e) {{ status.textContent = "error: " + e.message; }});
}})();
</script>
</body>
</html>
""".encode()
