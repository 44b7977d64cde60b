"""The AMP commands between the master and its workers, over a UNIX socket pair (which
also carries the listening sockets' file descriptors).

An AMP value holds at most 65,535 bytes; anything that may be larger (the files a
configuration names, a worker's report) travels in ``PART`` sized pieces.
"""

from __future__ import annotations

from twisted.protocols import amp

PART = 60_000


def pieces(data: bytes) -> list[bytes]:
    return [data[i : i + PART] for i in range(0, len(data), PART)] or [b""]


# -- master -> worker ------------------------------------------------------------------------


class FilePart(amp.Command):
    """A piece of one file the configuration names (bytes as the master read them)."""

    arguments = [
        (b"path", amp.Unicode()),
        (b"mode", amp.Integer()),
        (b"data", amp.String()),
        (b"last", amp.Boolean()),
    ]
    response = []


class Listen(amp.Command):
    """The worker's listening socket for a listener's address."""

    arguments = [
        (b"listener", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
        (b"fd", amp.Descriptor()),
    ]
    response = []


class Configure(amp.Command):
    """Serve the configuration at ``path`` prepared from the files sent (the first time:
    start; later: a reload). Answers once applied, with what changed."""

    arguments = [(b"path", amp.Unicode()), (b"generation", amp.Integer())]
    response = [(b"ok", amp.Boolean()), (b"text", amp.Unicode())]
    requiresAnswer = True


class CrlSnapshot(amp.Command):
    """A listener's CRLs are now those in the snapshot file at ``path``."""

    arguments = [(b"listener", amp.Unicode()), (b"path", amp.Unicode())]
    response = []


class Staple(amp.Command):
    """The OCSP response to staple on a listener (empty: none)."""

    arguments = [(b"listener", amp.Unicode()), (b"der", amp.String())]
    response = []


class Report(amp.Command):
    """A page of the worker's counters, as JSON (``more``: ask for the next page)."""

    arguments = [(b"page", amp.Integer())]
    response = [(b"data", amp.String()), (b"more", amp.Boolean())]


# -- worker -> master ------------------------------------------------------------------------


class Discover(amp.Command):
    """A client certificate named a CRL distribution point (crl_cache_from_cert)."""

    arguments = [(b"listener", amp.Unicode()), (b"url", amp.Unicode())]
    response = []
    requiresAnswer = False


class WhenAttempted(amp.Command):
    """Answers once the distribution point's first fetch is over and its result has been
    sent to the workers (a held client is then decided on the new data)."""

    arguments = [(b"listener", amp.Unicode()), (b"url", amp.Unicode())]
    response = []


class OcspQuery(amp.Command):
    """A worker's question about a client certificate (OCSP checking of clients): the
    master answers with the DER of an answer it validated (asking the responder once per
    certificate for every worker), or with why it has none."""

    arguments = [
        (b"listener", amp.Unicode()),
        (b"key_hash", amp.String()),  # SHA-1 of the issuer's public key
        (b"issuer", amp.String()),  # DER of the issuer the worker verified the chain with
        (b"serial", amp.Unicode()),  # decimal
        (b"responder", amp.Unicode()),  # "" : none known
        (b"subject", amp.Unicode()),
        (b"fresher_than", amp.Float()),
    ]
    response = [(b"der", amp.String()), (b"error", amp.Unicode())]
