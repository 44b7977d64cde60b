"""The deployment files shipped in conf/: the Kubernetes manifests are valid objects of the
Kubernetes API (kubernetes-validate, strict: an unknown field is an error) and hang together
(the Service selects the pods, the probes reach the admin listener the ConfigMap's
configuration opens, the files are where the configuration names them), and that
configuration passes the gateway's own start-up check."""

from __future__ import annotations

import copy
import os
import re

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from gateway.demo import pki
from gateway.prepare import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(ROOT, "conf", "kubernetes", "mqttgw.yaml")


def _docs() -> dict[str, dict]:  # type: ignore[type-arg]
    with open(MANIFESTS, encoding="utf-8") as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f)}


def test_manifests_are_valid_kubernetes_objects() -> None:
    docs = _docs()
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, latest_version(), strict=True)
    # The validator is strict: a misspelt field is refused.
    bad = copy.deepcopy(docs["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, latest_version(), strict=True)


def test_manifests_hang_together(tmp_path: object) -> None:
    docs = _docs()
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    gw = next(c for c in pod["spec"]["containers"] if c["name"] == "mqttgw")
    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert service["spec"]["ports"][0]["targetPort"] == "mqtts"
    # The configuration the pod runs: mounted as a directory (a subPath mount would never
    # see the ConfigMap change), at the path twistd is given.
    config_path = gw["args"][gw["args"].index("--config") + 1]
    mounts = {m["name"]: m for m in gw["volumeMounts"]}
    assert "subPath" not in mounts["config"]
    assert os.path.dirname(config_path) == mounts["config"]["mountPath"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert volumes["tls"]["secret"]["secretName"] == "mqttgw-tls"
    text = docs["ConfigMap"]["data"][os.path.basename(config_path)]
    # Every file the configuration names is in a mounted volume.
    named = re.findall(r"= (/etc/mqttgw/\S+)", text)
    assert named
    for path in named:
        assert any(path.startswith(m["mountPath"] + "/") for m in mounts.values()), path
    admin = re.search(r"^admin\.listen = 0\.0\.0\.0:(\d+)$", text, re.M)
    assert admin and int(admin.group(1)) == ports["admin"]
    listen = re.search(r"^listener\.ssl\.\w+ = 0\.0\.0\.0:(\d+)$", text, re.M)
    assert listen and int(listen.group(1)) == ports["mqtts"]
    assert re.search(r"^admin\.open_read = true$", text, re.M)  # the probes carry no token
    # The configuration passes the start-up check, with the Secret's files in place.
    d = str(tmp_path)
    root = pki.make_ca("k8s root")
    cert, key = pki.issue(root, "mqttgw", server=True, ocsp_url="http://ocsp.example/").write(
        d, "tls"
    )
    ca = pki.write_ca_bundle(os.path.join(d, "ca.crt"), root)
    token = os.path.join(d, "token")
    with open(token, "w") as f:
        f.write("0123456789abcdef0123456789abcdef\n")
    os.chmod(token, 0o600)
    local = {
        "/etc/mqttgw/tls/tls.crt": cert,
        "/etc/mqttgw/tls/tls.key": key,
        "/etc/mqttgw/tls/ca.crt": ca,
        "/etc/mqttgw/admin/token": token,
    }
    for path, here in local.items():
        text = text.replace(path, here)
    conf = os.path.join(d, "mqttgw.conf")
    with open(conf, "w") as f:
        f.write(text)
    prepared = prepare(conf)
    assert prepared.config.globals.workers == 0  # auto
    listener = prepared.config.listeners[0]
    assert listener.crl is not None and listener.ocsp is not None
    assert prepared.config.globals.shutdown_drain + 5 < pod["spec"]["terminationGracePeriodSeconds"]
