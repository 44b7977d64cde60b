"""Admission of new connections before any TLS work (sans-IO: the caller passes the time).

A TLS handshake costs the gateway far more CPU than it costs a client, so connections are
counted and rate-limited as they are accepted, and refused by closing them at once:

- ``max_connections``: concurrent connections on the listener (``too_many_connections``);
- ``max_connections_per_ip``: concurrent connections from one address
  (``too_many_connections_per_ip``);
- ``max_conn_rate_per_ip``: new connections per second from one address, a token bucket
  holding one second's worth (``rate_limited_per_ip``);
- ``max_conn_rate``: new connections per second on the listener, EMQX's key, a token bucket
  holding one second's worth (``rate_limited``).

An IPv6 client is counted by its /64 (one host's usual allocation: an address per connection
would otherwise walk around every per-address limit); an IPv4-mapped address as IPv4. A
token is taken only from buckets whose connection is admitted.

``RefusalLog`` keeps the log readable under attack: the first refusals of each interval are
logged one by one, the rest are counted and summarised in one line at the interval's end.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from gateway.reasons import Reason

# Per-address buckets are dropped once full again (an idle address costs nothing); if an
# attack brings more distinct addresses than this within a second, the table starts over
# (the listener-wide rate still holds).
MAX_TRACKED_ADDRESSES = 16384


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        elapsed = now - self.stamp
        if elapsed > 0:  # a clock that steps back refills nothing
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        return self.tokens

    def ready(self, now: float) -> bool:
        return self.refill(now) >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


def address_key(host: str) -> str:
    """The unit per-address limits count: the IPv4 address, an IPv6 /64."""
    if ":" not in host:
        return host  # IPv4, as the socket layer wrote it (the common case: no parsing)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a UNIX socket in tests): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return host


class Admission:
    """The limits of one listener. ``admit`` answers None (and counts the connection: the
    caller must ``release`` it when it closes) or the refusal reason."""

    def __init__(
        self,
        max_connections: int,
        max_connections_per_ip: int = 0,
        max_conn_rate: float = 0,
        max_conn_rate_per_ip: float = 0,
        now: float = 0.0,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_connections_per_ip  # 0: no limit
        self.rate = max_conn_rate
        self.rate_per_ip = max_conn_rate_per_ip
        self.active = 0
        self.per_ip: Counter[str] = Counter()
        self.listener_bucket = (
            TokenBucket(max_conn_rate, max(1.0, max_conn_rate), now) if max_conn_rate else None
        )
        self.buckets: dict[str, TokenBucket] = {}

    @property
    def per_address(self) -> bool:
        """Whether any limit counts by address (else the caller need not compute keys)."""
        return bool(self.max_per_ip or self.rate_per_ip)

    def reconfigure(self, limits: Any, now: float | None = None) -> None:
        """New limits (a reload) for the connections to come; the counts of the open ones
        stay (they are still open)."""
        self.max_connections = limits.max_connections
        self.max_per_ip = limits.max_connections_per_ip
        if not self.max_per_ip:
            self.per_ip.clear()
        if limits.max_conn_rate != self.rate:
            self.rate = limits.max_conn_rate
            stamp = self.listener_bucket.stamp if self.listener_bucket else (now or 0.0)
            self.listener_bucket = (
                TokenBucket(self.rate, max(1.0, self.rate), stamp) if self.rate else None
            )
        if limits.max_conn_rate_per_ip != self.rate_per_ip:
            self.rate_per_ip = limits.max_conn_rate_per_ip
            self.buckets.clear()

    def admit(self, key: str, now: float) -> Reason | None:
        if self.active >= self.max_connections:
            return Reason.TOO_MANY_CONNECTIONS
        if self.max_per_ip and self.per_ip[key] >= self.max_per_ip:
            return Reason.TOO_MANY_CONNECTIONS_PER_IP
        bucket = None
        if self.rate_per_ip:
            bucket = self.buckets.get(key)
            if bucket is None:
                if len(self.buckets) >= MAX_TRACKED_ADDRESSES:
                    self.prune(now)
                    if len(self.buckets) >= MAX_TRACKED_ADDRESSES:
                        self.buckets.clear()
                burst = max(1.0, self.rate_per_ip)
                bucket = self.buckets[key] = TokenBucket(self.rate_per_ip, burst, now)
            if not bucket.ready(now):
                return Reason.RATE_LIMITED_PER_IP
        listener = self.listener_bucket
        if listener is not None:
            if not listener.ready(now):
                return Reason.RATE_LIMITED
            listener.take()
        if bucket is not None:
            bucket.take()
        self.active += 1
        if self.max_per_ip:
            self.per_ip[key] += 1
        return None

    def release(self, key: str) -> None:
        self.active -= 1
        count = self.per_ip.get(key)
        if count is not None:  # not counted when admitted before a reload turned it on
            if count > 1:
                self.per_ip[key] = count - 1
            else:
                del self.per_ip[key]

    def prune(self, now: float) -> None:
        """Forget the per-address buckets that are full again."""
        full = [k for k, b in self.buckets.items() if b.refill(now) >= b.burst]
        for k in full:
            del self.buckets[k]


class RefusalLog:
    """Decides which refusals are logged one by one: the first ``individual`` of each
    interval; the others are counted (by reason and address) for ``summary``."""

    def __init__(self, individual: int = 10) -> None:
        self.individual = individual
        self.logged = 0
        self.suppressed: Counter[str] = Counter()
        self.addresses: Counter[str] = Counter()

    def note(self, reason: Reason, key: str) -> bool:
        """True if this refusal should be logged on its own line."""
        if self.logged < self.individual:
            self.logged += 1
            return True
        self.suppressed[str(reason)] += 1
        self.addresses[key] += 1
        return False

    def summary(self) -> str | None:
        """The interval's summary line (None if nothing was suppressed); starts a new one."""
        text = None
        if self.suppressed:
            total = sum(self.suppressed.values())
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.suppressed.items()))
            top = ", ".join(f"{a} ({n})" for a, n in self.addresses.most_common(3))
            text = (
                f"{total} more connections refused before TLS ({reasons}) from "
                f"{len(self.addresses)} address(es); most: {top}"
            )
        self.logged = 0
        self.suppressed.clear()
        self.addresses.clear()
        return text
