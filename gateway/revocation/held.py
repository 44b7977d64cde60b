"""A CRL as the gateway holds it (sans-IO): ``CrlInfo`` (what was validated), ``SerialIndex``
(the revoked serials as a sorted array of fixed-width integers, searched by bisection, never
a Python object per entry), ``LoadedCrl`` (both), and the answer format the CRL worker
writes them in (decoded in place, without copying). ``gateway.revocation.crl`` parses and
validates; this module is what stays in memory."""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Iterable
from itertools import repeat
from typing import Any, Literal

import attrs

from gateway.errors import GatewayError
from gateway.revocation.scope import CrlScope


class CrlError(GatewayError):
    """A CRL that must not be used. ``kind`` is a short machine-readable class."""


@attrs.frozen
class CrlInfo:
    """What the gateway knows about one validated CRL."""

    issuer: bytes  # DER of the issuer Name: the lookup key
    issuer_text: str
    number: int | None
    this_update: float  # POSIX seconds
    next_update: float | None
    count: int
    size: int  # bytes of the body it came in
    sha256: str  # of that body
    scope: CrlScope = CrlScope()  # what its issuing distribution point limits it to
    # (issuer DER, serial) of each certificate of the signer's path below its trust anchor:
    # the CRL is usable only while none of them is revoked (RFC 5280 §6.3.3 (f)).
    signer: tuple[tuple[bytes, int], ...] = ()
    delta_base: int | None = None  # a delta CRL: the number of the base CRL it completes
    freshest: tuple[str, ...] = ()  # http(s) URLs of its delta CRLs (FreshestCRL)

    def expired(self, now: float, grace: float = 0.0) -> bool:
        return self.next_update is not None and now > self.next_update + grace

    def compare(self, other: CrlInfo | None) -> str:
        """'newer', 'same' or 'older' than ``other`` (CRL number, else thisUpdate)."""
        if other is None:
            return "newer"
        if self.number is not None and other.number is not None:
            # (CRL numbers are integers of up to 20 octets: compared as integers, exactly)
            number, their_number = self.number, other.number
            if number > their_number:
                return "newer"
            return "same" if number == their_number else "older"
        mine, theirs = self.this_update, other.this_update
        if mine > theirs:
            return "newer"
        return "same" if mine == theirs else "older"

    def to_json(self) -> dict[str, object]:
        return {
            "issuer": self.issuer.hex(),
            "issuer_text": self.issuer_text,
            "number": self.number,
            "this_update": self.this_update,
            "next_update": self.next_update,
            "count": self.count,
            "size": self.size,
            "sha256": self.sha256,
            "scope": None if self.scope.complete else self.scope.to_json(),
            "signer": [[issuer.hex(), serial] for issuer, serial in self.signer],
            "delta_base": self.delta_base,
            "freshest": list(self.freshest),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CrlInfo:
        """From the CRL worker's answer (JSON: values are checked by their conversions)."""
        return cls(
            issuer=bytes.fromhex(str(data["issuer"])),
            issuer_text=str(data["issuer_text"]),
            number=None if data["number"] is None else int(data["number"]),
            this_update=float(data["this_update"]),
            next_update=None if data["next_update"] is None else float(data["next_update"]),
            count=int(data["count"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            scope=CrlScope.from_json(data.get("scope")),
            signer=tuple((bytes.fromhex(str(i)), int(s)) for i, s in data.get("signer", ())),
            delta_base=None if data.get("delta_base") is None else int(data["delta_base"]),
            freshest=tuple(map(str, data.get("freshest", ()))),
        )


class SerialIndex:
    """Revoked serial numbers as one sorted bytes object of fixed-width big-endian entries.

    Each entry is the serial plus 2**(8*width - 1) (offset binary), so negative serials (old
    CAs issued them) and serials longer than RFC 5280's 20 octets are stored and matched
    exactly, and byte order is numeric order. Memory is ``width`` bytes per entry (20 for
    RFC 5280's largest serials) plus a constant; a lookup is a bisection over ``len`` entries
    with no allocation per step.
    """

    __slots__ = ("blob", "count", "offset", "width")

    def __init__(
        self, width: int, blob: bytes | bytearray, offset: int = 0, count: int | None = None
    ) -> None:
        """``blob[offset:offset + count * width]`` holds the entries (shared, not copied)."""
        if count is None:
            count, rest = divmod(len(blob) - offset, width) if width > 0 else (0, 1)
            if rest:
                raise ValueError("index blob is not a whole number of entries")
        if width <= 0 or offset + count * width > len(blob):
            raise ValueError("index blob is shorter than its entries")
        self.width = width
        self.blob = blob
        self.offset = offset
        self.count = count

    @property
    def nbytes(self) -> int:
        return self.count * self.width

    def entries(self) -> bytes:
        return bytes(self.blob[self.offset : self.offset + self.nbytes])

    @classmethod
    def from_serials(cls, serials: Iterable[int]) -> SerialIndex:
        # A CA usually lists its serials in order: sorting them as they come is then one
        # pass, where a set's order would cost a full sort (0.6 s for 1,000,000).
        values = sorted(serials)
        if any(map(operator.eq, values, itertools.islice(values, 1, None))):
            values = sorted(set(values))
        # The largest magnitude is at one end; one bit more for the sign.
        bits = max(values[0].bit_length(), values[-1].bit_length()) + 1 if values else 1
        width = (bits + 7) // 8
        half = 1 << (8 * width - 1)
        shifted = map(half.__add__, values)
        big: Literal["big"] = "big"
        return cls(width, b"".join(map(int.to_bytes, shifted, repeat(width), repeat(big))))

    def __len__(self) -> int:
        return self.count

    def __contains__(self, serial: object) -> bool:
        if not isinstance(serial, int):
            return False
        width = self.width
        half = 1 << (8 * width - 1)
        if not -half <= serial < half:
            return False
        key = (serial + half).to_bytes(width, "big")
        blob = self.blob
        base = self.offset
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            start = base + mid * width
            entry = blob[start : start + width]
            if entry < key:
                lo = mid + 1
            elif entry > key:
                hi = mid
            else:
                return True
        return False


@attrs.frozen
class LoadedCrl:
    info: CrlInfo
    index: SerialIndex  # the serials it revokes
    # A delta CRL's removeFromCRL entries: serials its base lists that are no longer revoked
    # (a certificateHold released).
    removed: SerialIndex | None = None
    # An indirect CRL's entries for other certificate issuers (certificateIssuer): issuer
    # DER -> index. ``index`` holds those of the CRL's own issuer.
    sections: dict[bytes, SerialIndex] | None = None


def describe_loaded(crl: LoadedCrl) -> dict[str, Any]:
    """The JSON item that introduces a LoadedCrl's blobs (``loaded_blobs``, in that order) in
    the CRL worker's answer and in a worker snapshot; ``process.decode_answer`` reads it."""
    return dict(
        crl.info.to_json(),
        width=crl.index.width,
        blob_len=crl.index.nbytes,
        removed_width=crl.removed.width if crl.removed is not None else 0,
        removed_len=crl.removed.nbytes if crl.removed is not None else 0,
        sections=[
            [issuer.hex(), index.width, index.nbytes]
            for issuer, index in (crl.sections or {}).items()
        ],
    )


def loaded_blobs(crl: LoadedCrl) -> list[memoryview]:
    """The entries of each index of ``crl``, as views into their buffers (no copy)."""
    indexes = [crl.index]
    if crl.removed is not None:
        indexes.append(crl.removed)
    indexes.extend((crl.sections or {}).values())
    return [memoryview(i.blob)[i.offset : i.offset + i.nbytes] for i in indexes]


def decode_answer(data: bytes | bytearray) -> list[LoadedCrl]:
    """Parse the worker's stdout: a JSON line, then the index blobs. Raises CrlError.

    The indexes refer to ``data`` in place (no copy: a 1,000,000-entry index is 16 MB, and
    copying it on the reactor thread is a stall every connection feels).
    """
    end = data.find(b"\n")
    if end < 0:
        raise CrlError("worker_error", "no answer from the CRL worker")
    answer = json.loads(bytes(data[:end]))
    if not answer.get("ok"):
        raise CrlError(str(answer.get("kind")), str(answer.get("detail")))
    out = []
    pos = end + 1
    for item in answer["crls"]:
        index, pos = _index_at(data, pos, int(item["width"]), int(item["blob_len"]))
        removed = None
        if item.get("removed_width"):
            removed, pos = _index_at(
                data, pos, int(item["removed_width"]), int(item["removed_len"])
            )
        sections = {}
        for issuer_hex, width, size in item.get("sections", []):
            sections[bytes.fromhex(issuer_hex)], pos = _index_at(data, pos, int(width), int(size))
        out.append(LoadedCrl(CrlInfo.from_json(item), index, removed, sections or None))
    if pos != len(data):
        raise CrlError("worker_error", "CRL worker answer has trailing bytes")
    return out


def _index_at(data: bytes | bytearray, pos: int, width: int, size: int) -> tuple[SerialIndex, int]:
    if width <= 0 or size < 0 or size % width or pos + size > len(data):
        raise CrlError("worker_error", "CRL worker answer is malformed")
    return SerialIndex(width, data, pos, size // width), pos + size
