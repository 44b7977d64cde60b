"""OCSP answers about client certificates, as held (sans-IO, pure): keyed by (issuer key
hash, serial), bounded with the least recently used out first, each used until its
nextUpdate plus a grace period; what to ask a responder, and the request; the answers'
file in ``ocsp_cache.dir``."""

from __future__ import annotations

import base64
import collections
import json
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from gateway.reasons import OcspVerdict
from gateway.revocation import ocsp
from gateway.revocation.store import write_atomically

Key = tuple[bytes, int]  # (SHA-1 of the issuer's public key, serial)


def issuer_key_hash(issuer: x509.Certificate) -> bytes:
    """SHA-1 of the issuer's subjectPublicKey (RFC 6960 CertID.issuerKeyHash): the key."""
    return ocsp.issuer_hashes(issuer, hashes.SHA1())[1]


@attrs.frozen
class OcspAnswer:
    """A validated answer about one certificate."""

    status: OcspVerdict  # good, revoked or unknown
    this_update: float
    next_update: float  # nextUpdate, or thisUpdate + max_age when it had none
    fetched: float
    der: bytes
    responder: str


@attrs.frozen
class OcspQuestion:
    """What to ask a responder about one certificate, and where."""

    key: Key
    serial: int
    issuer: x509.Certificate
    responder: str | None  # None: no responder known for it
    subject: str


class OcspAnswers:
    """The answers held (sans-IO): bounded, least recently used first out."""

    def __init__(self, clock: Any, size: int, grace: float) -> None:
        self._clock = clock
        self.size = size
        self.grace = grace
        self._answers: collections.OrderedDict[Key, OcspAnswer] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.changed = False  # since the last write to disk

    def __len__(self) -> int:
        return len(self._answers)

    def usable(self, key: Key) -> OcspAnswer | None:
        """The answer for ``key`` if it may still be used (nextUpdate plus the grace period
        not passed), counting a hit or a miss."""
        answer = self._answers.get(key)
        if answer is not None and self._clock.seconds() <= answer.next_update + self.grace:
            self._answers.move_to_end(key)
            self.hits += 1
            return answer
        self.misses += 1
        return None

    def peek(self, key: Key) -> OcspAnswer | None:
        return self._answers.get(key)

    def put(self, key: Key, answer: OcspAnswer) -> bool:
        """Hold ``answer`` unless an answer produced later is held; True if held."""
        current = self._answers.get(key)
        if current is not None and current.this_update > answer.this_update:
            return False
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
        self.changed = True
        return True

    def items(self) -> list[tuple[Key, OcspAnswer]]:
        return list(self._answers.items())

    def by_status(self) -> dict[str, int]:
        out = {v.value: 0 for v in (OcspVerdict.GOOD, OcspVerdict.REVOKED, OcspVerdict.UNKNOWN)}
        for answer in self._answers.values():
            out[answer.status.value] += 1
        return out

    def oldest(self) -> float | None:
        """thisUpdate of the oldest answer held."""
        return min((a.this_update for a in self._answers.values()), default=None)


def write_answers(path: str, answers: list[tuple[Key, OcspAnswer]]) -> None:
    items = [
        {
            "key": key[0].hex(),
            "serial": key[1],
            "fetched": a.fetched,
            "responder": a.responder,
            "der": base64.b64encode(a.der).decode("ascii"),
        }
        for key, a in answers
    ]
    write_atomically(path, json.dumps({"format": 1, "answers": items}).encode(), {})


def request_for(q: OcspQuestion) -> bytes:
    """The DER request about ``q``'s certificate (SHA-1 CertID, as responders expect)."""
    name_hash = ocsp.issuer_hashes(q.issuer, hashes.SHA1())[0]
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, q.key[0], q.serial, hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)
