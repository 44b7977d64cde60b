"""What crl_cache.dir keeps for a listener, brought back at start: the kept index serves at
once if its record vouches for it (memory-mapped, nothing parsed), and a minute later the
CRL worker parses the kept body again and the index must match it; else the kept body is
parsed. Also the distribution points an earlier run learnt of."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clock import CLOCK_SKEW
from gateway.errors import describe_error
from gateway.offload import off_reactor
from gateway.reasons import FetchResult
from gateway.revocation.crl import CrlError, LoadedCrl, decode_answer
from gateway.revocation.crl_cache import CrlCache
from gateway.revocation.crl_sources import Source, same_indexes
from gateway.revocation.process import encode_request
from gateway.revocation.store import read_index

log = Logger(namespace="gateway.revocation.crl_service")

# The worker's answer (an index of fixed-width serials) is smaller than the CRL it came
# from; bound it at twice the body so a broken worker cannot flood the reactor.
OUTPUT_PER_BODY_BYTE = 2

# A CRL restored from the index kept in crl_cache.dir serves at once; this long after the
# start (past the reconnect storm), the CRL worker parses the kept body again and the index
# must match what it finds.
INDEX_VERIFY_DELAY = 60.0


def kept_distribution_points(cache_dir: str, listener: str) -> list[str]:
    """The URLs of the distribution points whose CRLs an earlier run kept (start-up only)."""
    directory = os.path.join(cache_dir, listener)
    if not os.path.isdir(directory):
        return []
    urls = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".crl.json"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                url = json.load(f).get("url")
        except (OSError, ValueError):
            continue
        if isinstance(url, str):
            urls.append(url)
    return urls


class KeptCrls:
    """Restores a listener's CRL sources from crl_cache.dir. ``install(source, crls,
    result)`` puts CRLs in force; ``updated(crls)`` tells the listener (its live sessions
    are checked again)."""

    def __init__(
        self,
        listener: str,
        reactor: Any,
        processor: Any,
        trust_pem: bytes,
        limit: int,
        cache: CrlCache,
        install: Callable[[Source, list[LoadedCrl], FetchResult], None],
        updated: Callable[[list[LoadedCrl]], Any],
    ) -> None:
        self.listener = listener
        self.reactor = reactor
        self.processor = processor
        self.trust_pem = trust_pem
        self.limit = limit  # the worker's answer about a kept body, at most
        self.cache = cache
        self.install = install
        self.updated = updated
        self._verifications: list[IDelayedCall] = []  # delayed checks of restored indexes

    def stop(self) -> None:
        for call in self._verifications:
            if call.active():
                call.cancel()

    def restore(self, source: Source, path: str) -> defer.Deferred[None]:
        """At start: the persisted CRL's index if its record vouches for it (memory-mapped,
        nothing parsed: ready at once, verified later), else the body through the worker."""
        d = off_reactor(self.reactor, read_index, path, self.trust_pem)

        def opened(found: tuple[Any, str]) -> defer.Deferred[None] | None:
            mapping, why = found
            if mapping is not None:
                try:
                    crls = decode_answer(mapping)
                except CrlError as e:
                    why = f"index not readable ({e.detail})"
                else:
                    self.install(source, crls, FetchResult.LOADED_FROM_DISK)
                    source.from_index = crls
                    self._verifications.append(
                        self.reactor.callLater(
                            INDEX_VERIFY_DELAY, self._verify_index, source, path, crls
                        )
                    )
                    return None
            log.info(
                "crl {listener} {url}: parsing the persisted CRL {path} ({why})",
                listener=self.listener,
                url=source.state.url,
                path=path,
                why=why,
            )
            return self._load_persisted(source, path)

        return d.addCallback(opened)

    def _verify_index(self, source: Source, path: str, crls: list[LoadedCrl]) -> None:
        """The kept index must be what the kept body holds: if the index still serves, the
        worker parses and validates the body again and its result replaces a mismatch."""
        url = source.state.url
        held = self.cache.loaded_from(url)
        if source.from_index is not crls or {id(c) for c in held} != {id(c) for c in crls}:
            return  # a fetch replaced it: what serves came from the worker already
        d = self._parse_kept(url, path)

        def checked(verified: list[LoadedCrl]) -> None:
            if self.cache.loaded_from(url) != held:
                return  # replaced meanwhile
            source.from_index = None
            if same_indexes(crls, verified):
                log.info(
                    "crl {listener} {url}: kept index verified", listener=self.listener, url=url
                )
                return
            log.critical(
                "crl {listener} {url}: the index kept in {path} does not match the CRL kept "
                "beside it; serving the CRL as parsed now",
                listener=self.listener,
                url=url,
                path=path,
            )
            self.cache.forget_source(url)
            self.install(source, verified, FetchResult.LOADED_FROM_DISK)
            self.updated(verified)

        def failed(reason: Failure) -> None:
            if self.cache.loaded_from(url) != held:
                return
            source.from_index = None
            log.critical(
                "crl {listener} {url}: the CRL kept in {path} no longer validates ({why}); "
                "dropping what was restored from it",
                listener=self.listener,
                url=url,
                path=path,
                why=describe_error(reason.value),
            )
            self.cache.forget_source(url)
            source.state.crls = ()
            self.updated([])

        d.addCallbacks(checked, failed)

    def _parse_kept(self, url: str, path: str) -> defer.Deferred[list[LoadedCrl]]:
        """The CRL kept in crl_cache.dir, parsed and validated by the worker."""
        header = encode_request(
            self.trust_pem, self.reactor.seconds(), CLOCK_SKEW, None, url, [], body_path=path
        )
        return self.processor.process(header, [], self.limit)

    def _load_persisted(self, source: Source, path: str) -> defer.Deferred[None]:
        d = self._parse_kept(source.state.url, path)

        def loaded(crls: list[LoadedCrl]) -> None:
            self.install(source, crls, FetchResult.LOADED_FROM_DISK)

        def failed(reason: Failure) -> None:
            log.warn(
                "crl {listener} {url}: persisted CRL {path} not usable: {why}",
                listener=self.listener,
                url=source.state.url,
                path=path,
                why=describe_error(reason.value),
            )

        return d.addCallbacks(loaded, failed)
