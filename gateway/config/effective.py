"""The effective configuration, defaults filled in, in the file's own syntax
(what ``mqttgw check-config`` prints; it parses back to the same settings)."""

from __future__ import annotations

from gateway.config.keys import KEYS, Key
from gateway.config.model import Config
from gateway.config.values import format_bind, format_host_port_list


def _line(name: str, key: Key, settings: object) -> str:
    value = key.value_of(settings)
    return f"{name} = {'' if value is None else key.format(value)}"


def format_config(config: Config) -> str:
    out = [f"# effective configuration of {config.path}"]
    for key in KEYS:
        if not key.listener:  # global-only: the same for every listener
            out.append(_line(key.name, key, config.globals))
    for listener in config.listeners:
        prefix = listener.key_prefix
        out.append("")
        out.append(f"{prefix} = {format_bind(listener.bind)}")
        for key in KEYS:
            if not key.listener or (key.tls_only and not listener.transport.tls):
                continue  # (a ws listener: no TLS, its TLS keys do not apply)
            if (
                key.section is not None
                and not key.switch
                and getattr(listener, key.section) is None
            ):
                continue  # a section that is off: its keys have no effect
            out.append(_line(f"{prefix}.{key.name}", key, listener))
        for tenant in listener.tenants:
            at = f"{prefix}.tenant.{tenant.id}"
            out.append(f"{at}.server_names = {', '.join(tenant.server_names)}")
            out.append(f"{at}.certfile = {tenant.certfile}")
            out.append(f"{at}.keyfile = {tenant.keyfile}")
            if tenant.cacertfile is not None:
                out.append(f"{at}.cacertfile = {tenant.cacertfile}")
            out.append(f"{at}.enabled = {'true' if tenant.enabled else 'false'}")
            if tenant.match_ca is not None:
                out.append(f"{at}.match_ca = {tenant.match_ca}")
            if tenant.acl_file is not None:
                out.append(f"{at}.acl_file = {tenant.acl_file}")
            if tenant.upstream is not None:
                out.append(f"{at}.upstream = {format_host_port_list(tenant.upstream)}")
            by_attr = {k.attr: k for k in KEYS if k.listener}
            for attr, value in tenant.overrides:
                key = by_attr[attr]
                shown = "" if value is None else key.format(value)
                out.append(f"{at}.{key.name} = {shown}")
    return "\n".join(out) + "\n"
