"""What operators read of a running listener: its status record (counters, CRL sources,
staple, brokers) and the report of a refresh asked for by ``POST /refresh``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography import x509

from gateway.clock import format_timestamp
from gateway.config.model import CrlSettings
from gateway.config.values import format_bind
from gateway.status import BrokerStatus, CertificateStatus, CrlCheckStatus, ListenerStatus

if TYPE_CHECKING:
    from gateway.listener import ListenerService


def certificate_status(role: str, cert: x509.Certificate) -> CertificateStatus:
    return CertificateStatus(
        role,
        cert.subject.rfc4514_string(),
        format(cert.serial_number, "X"),
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )


def undecided(crl: CrlCheckStatus | None, settings: CrlSettings | None, now: float) -> str:
    """Why a good device would be refused now (""): with crl_expired_policy = reject, a
    configured CRL source holds no CRL, or only CRLs past their nextUpdate and grace.
    Sources found in device certificates are fetched on demand and hold the device instead.
    Where another process fetches (a worker), its master says."""
    if crl is None or settings is None or settings.expired_policy != "reject":
        return ""
    why = []
    for src in crl.sources:
        if src.discovered:
            continue
        if not src.crls:
            failed = f" ({src.last_error})" if src.last_error else ""
            why.append(f"no CRL from {src.url} yet{failed}")
        elif all(
            c.next_update is not None and c.next_update + settings.grace_period < now
            for c in src.crls
        ):
            why.append(f"the CRL from {src.url} is past its nextUpdate")
    return "; ".join(why)


def own_status(listener: ListenerService) -> ListenerStatus:
    """This process's view of a listener, in one record."""
    parts = listener.parts
    settings = parts.settings
    certificates = [certificate_status("server", parts.material.chain[0])]
    upstream = parts.material.upstream
    if upstream is not None and upstream.client_cert is not None:
        certificates.append(certificate_status("upstream", upstream.client_cert))
    crl = None
    if parts.crl is not None and parts.revocation is not None:
        crl = CrlCheckStatus(
            held=len(parts.revocation.cache.infos()),
            counts=dict(parts.revocation.counts),
            sources=parts.crl.status(),
        )
    stapler = parts.stapler
    ocsp = stapler.status() if stapler is not None else None  # None: another process staples
    tls = settings.tls
    return ListenerStatus(
        listener.stats.snapshot(),
        crl,
        ocsp,
        bind=format_bind(settings.bind),
        upstream=format_bind(settings.upstream.address),
        accepting=listener.port.accepting,
        not_accepting=listener.port.waiting_reason,
        tls=f"{tls.profile} ({','.join(tls.versions)})",
        brokers=tuple(
            BrokerStatus(b.name, b.up, b.active, b.sessions, b.failures, b.last_error)
            for b in parts.pool.brokers
        ),
        certificates=tuple(certificates),
        undecided=undecided(crl, settings.crl, listener.reactor.seconds())
        if listener.role.fetches
        else "",
    )


def refresh_report(listeners: list[ListenerService]) -> dict[str, Any]:
    """After ``POST /refresh``: each listener's sources and staple, as JSON."""
    out: dict[str, Any] = {"ok": True, "listeners": {}}
    for ls in listeners:
        parts = ls.parts
        entry: dict[str, Any] = {}
        if parts.crl is not None and ls.role.fetches:
            entry["crl"] = [
                {
                    "url": src.url,
                    "result": src.last_result,
                    "error": src.last_error,
                    "crls": [
                        {"issuer": c.issuer, "number": c.number, "entries": c.entries}
                        for c in src.crls
                    ],
                }
                for src in parts.crl.status()
            ]
        if parts.stapler is not None and ls.role.fetches:
            o = parts.stapler.status()
            entry["ocsp"] = {
                "status": o.status,
                "result": o.last_result,
                "error": o.last_error,
                "next_update": format_timestamp(o.next_update),
            }
        out["listeners"][parts.name] = entry or "nothing to refresh"
    return out
