"""The revoked serials of a CRL read straight from its DER (sans-IO).

``cryptography`` makes a Python object per revoked entry, and its extensions another: about
2.6 s for a 1,000,000-entry CRL on this project's 2-core machine, most of a start from the
network. This walks the DER of ``revokedCertificates`` once and keeps only each entry's
serial: about 0.95 s; when every entry has the shape of the first (one serial length, one
kind of date, no extensions), the columns are checked with strided slices and the serials
sliced out: 0.39 s. It is used only after ``cryptography`` has parsed the same bytes
(strict DER) and the CRL's signature has been verified over them, and only for entries it
fully understands: an entry with a critical extension or a certificateIssuer, or anything
unexpected in the encoding, makes it answer None, and the caller reads the CRL through
``cryptography`` as before (which names what is wrong).
"""

from __future__ import annotations

import functools

_TIME_TAGS = (0x17, 0x18)  # UTCTime, GeneralizedTime
_CERTIFICATE_ISSUER = b"\x06\x03\x55\x1d\x1d"  # id-ce-certificateIssuer (2.5.29.29)
_to_int = functools.partial(int.from_bytes, byteorder="big", signed=True)


class _Unexpected(Exception):
    """Not the shape this reader handles: the caller takes the general path."""


def _tlv(b: bytes, i: int, end: int) -> tuple[int, int]:
    """(start, stop) of the contents of the DER element at ``i``, which must end by ``end``."""
    if i + 2 > end:
        raise _Unexpected
    first = b[i + 1]
    if first < 0x80:
        start, length = i + 2, first
    else:
        n = first & 0x7F
        if not 1 <= n <= 4:
            raise _Unexpected
        start = i + 2 + n
        length = int.from_bytes(b[i + 2 : start], "big")
    stop = start + length
    if stop > end:
        raise _Unexpected
    return start, stop


def _plain_extensions(b: bytes, i: int, end: int) -> bool:
    """Whether the entry extensions at ``i`` (ending exactly at ``end``) are all non-critical
    and none is a certificateIssuer: nothing that changes what the entry revokes."""
    if b[i] != 0x30:
        raise _Unexpected
    start, stop = _tlv(b, i, end)
    if stop != end:
        raise _Unexpected
    i = start
    while i < stop:
        if b[i] != 0x30:
            raise _Unexpected
        ext_start, ext_stop = _tlv(b, i, stop)
        if b[ext_start] != 0x06:
            raise _Unexpected
        _, oid_stop = _tlv(b, ext_start, ext_stop)
        if b[ext_start:oid_stop] == _CERTIFICATE_ISSUER:
            return False
        if b[oid_stop] == 0x01:  # critical (DER omits the default FALSE)
            return False
        i = ext_stop
    return True


def _uniform(b: bytes, i: int, end: int) -> list[int] | None:
    """The serials of entries ``b[i:end]`` when every entry has the shape of the first:
    the same length, a serial of the same length, a revocation date of the same kind and
    no extensions (a large CRL of a CA whose serials are of one size often is). Checked
    column by column, each a C-speed strided slice, then the serials sliced out; None (the
    entry-by-entry walk decides) for anything else."""
    if end - i < 2 or b[i] != 0x30 or b[i + 1] >= 0x80:
        return None
    size = b[i + 1] + 2  # one entry, header included (short-form length: up to 129 bytes)
    if (end - i) % size or b[i + 2] != 0x02 or not 0 < b[i + 3] < 0x80:
        return None
    width = b[i + 3]
    at = 4 + width  # the revocationDate's tag
    if at + 2 > size or b[i + at] not in _TIME_TAGS or at + 2 + b[i + at + 1] != size:
        return None
    count = (end - i) // size
    column = b[i:end]
    for offset in (0, 1, 2, 3, at, at + 1):
        if column[offset::size] != bytes([column[offset]]) * count:
            return None
    return [_to_int(column[k + 4 : k + at]) for k in range(0, end - i, size)]


def revoked_serials(der: bytes) -> list[int] | None:
    """The serials of every entry of the DER-encoded CRL ``der``, in order; None if the CRL
    has entries this reader leaves to the general path (see the module docstring)."""
    try:
        return _serials(der)
    except (_Unexpected, IndexError):
        return None


def _serials(b: bytes) -> list[int] | None:
    if not b or b[0] != 0x30:
        return None
    start, stop = _tlv(b, 0, len(b))  # CertificateList
    if b[start] != 0x30:
        return None
    i, tbs_end = _tlv(b, start, stop)  # TBSCertList
    if b[i] == 0x02:  # version
        i = _tlv(b, i, tbs_end)[1]
    for tag in (0x30, 0x30):  # signature AlgorithmIdentifier, issuer Name
        if b[i] != tag:
            return None
        i = _tlv(b, i, tbs_end)[1]
    if b[i] not in _TIME_TAGS:
        return None
    i = _tlv(b, i, tbs_end)[1]  # thisUpdate
    if i < tbs_end and b[i] in _TIME_TAGS:
        i = _tlv(b, i, tbs_end)[1]  # nextUpdate
    if i >= tbs_end or b[i] == 0xA0:
        return []  # no revokedCertificates
    if b[i] != 0x30:
        return None
    i, end = _tlv(b, i, tbs_end)
    uniform = _uniform(b, i, end)
    if uniform is not None:
        return uniform
    parts: list[bytes] = []
    append = parts.append
    while i < end:
        # One entry: SEQUENCE { serial INTEGER, revocationDate Time, extensions OPTIONAL }.
        if b[i] != 0x30:
            return None
        n = b[i + 1]
        if n < 0x80:
            j = i + 2
            entry_end = j + n
        elif n == 0x81:
            j = i + 3
            entry_end = j + b[i + 2]
        elif n == 0x82:
            j = i + 4
            entry_end = j + (b[i + 2] << 8 | b[i + 3])
        else:
            return None
        if entry_end > end or b[j] != 0x02:
            return None
        length = b[j + 1]
        if not 0 < length < 0x80:
            return None
        k = j + 2 + length
        append(b[j + 2 : k])
        if b[k] not in _TIME_TAGS or b[k + 1] >= 0x80:
            return None
        k += 2 + b[k + 1]
        if k != entry_end:
            if k > entry_end or not _plain_extensions(b, k, entry_end):
                return None
        i = entry_end
    if i != end:
        return None
    return list(map(_to_int, parts))
