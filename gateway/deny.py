"""The deny list (``deny_file``): device certificates refused whatever their CA and their
revocation status say, named by the SHA-256 fingerprint of the certificate or by its serial
(with or without its issuer). Pure: text in, a ``DenyList`` out; a certificate in, the line
that names it out.

One entry a line; ``#`` starts a comment; blank lines are skipped::

    sha256 3FA2...        the SHA-256 of the certificate's DER, 64 hex digits (colons allowed:
                          `openssl x509 -noout -fingerprint -sha256` prints it so)
    serial 1A2B3C         the serial in hex (as `openssl x509 -noout -serial` prints it),
                          whatever the issuer
    serial 1A2B3C CN=Devices CA,O=Example
                          that serial from that issuer only (RFC 4514, as
                          `openssl x509 -noout -issuer -nameopt RFC2253` prints it)

An operator's "block this device now", for when a CA cannot or will not revoke in time
(HAProxy's and nginx's answer is to edit a CRL by hand). Any other line is an error naming
its line; the file is read with the configuration, and again on each reload (SIGHUP,
``/reload``, ``watch_files``), and then live sessions whose certificate it names are closed.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

MAX_LINE = 4096


class DenyError(ValueError):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"line {line}: {why}")
        self.line = line
        self.why = why


@attrs.frozen
class DenyList:
    """``fingerprints``: SHA-256 digests; ``serials``: serial -> the issuers (RFC 4514, as
    cryptography writes them) it is denied from, or None for any issuer."""

    fingerprints: frozenset[bytes] = frozenset()
    serials: dict[int, frozenset[str] | None] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self.fingerprints) + len(self.serials)

    def match(self, cert: x509.Certificate) -> str | None:
        """How the list names ``cert`` ("sha256 ..." or "serial ..."), or None."""
        serial = cert.serial_number
        if serial in self.serials:
            issuers = self.serials[serial]
            if issuers is None:
                return f"serial {serial:X}"
            issuer = cert.issuer.rfc4514_string()
            if issuer in issuers:
                return f"serial {serial:X} {issuer}"
        if self.fingerprints:
            digest = cert.fingerprint(hashes.SHA256())
            if digest in self.fingerprints:
                return f"sha256 {digest.hex().upper()}"
        return None


def parse_deny(text: str) -> DenyList:
    """The list ``text`` holds; DenyError names the first bad line."""
    fingerprints: set[bytes] = set()
    serials: dict[int, set[str] | None] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if len(raw) > MAX_LINE:
            raise DenyError(number, f"longer than {MAX_LINE} characters")
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if kind == "sha256":
            fingerprints.add(_fingerprint(number, rest))
        elif kind == "serial":
            value, _, issuer = rest.partition(" ")
            serial = _serial(number, value)
            if not issuer.strip():
                serials[serial] = None
            else:
                name = _issuer(number, issuer.strip())
                held = serials.setdefault(serial, set())
                if held is not None:  # (already denied from any issuer)
                    held.add(name)
        else:
            raise DenyError(number, f"{kind!r} is not an entry: sha256 HEX or serial HEX [ISSUER]")
    return DenyList(
        frozenset(fingerprints),
        {s: (None if i is None else frozenset(i)) for s, i in serials.items()},
    )


def _fingerprint(number: int, value: str) -> bytes:
    digits = value.replace(":", "")
    if len(digits) != 64 or not _is_hex(digits):
        raise DenyError(number, "a SHA-256 fingerprint is 64 hex digits (colons allowed)")
    return bytes.fromhex(digits)


def _serial(number: int, value: str) -> int:
    digits = value.replace(":", "")
    if not digits or len(digits) > 40 or not _is_hex(digits):
        raise DenyError(number, f"{value!r} is not a serial: 1 to 40 hex digits (20 bytes)")
    return int(digits, 16)


def _issuer(number: int, value: str) -> str:
    try:
        return x509.Name.from_rfc4514_string(value).rfc4514_string()
    except ValueError as e:
        raise DenyError(number, f"{value!r} is not an RFC 4514 name: {e}") from None


def _is_hex(digits: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in digits)
