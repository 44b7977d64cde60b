"""A listener's pool of brokers: which broker a client goes to, and which are healthy.
Sans-IO: the caller passes the time and reports connections, failures and check results.

Balancing (``upstream_balance``):

- ``least_conn`` (default): the healthy broker with the fewest relayed sessions (ties go
  round robin, so an idle pool still spreads);
- ``round_robin``: healthy brokers in turn;
- ``client_id``: rendezvous (highest random weight) hashing of the MQTT client id: a client id
  always ranks the brokers the same way, so a device with a persistent session reaches the
  broker holding it, and adding or removing one broker of N moves about 1/N of the clients.

A broker is down after a failed connect (passive) or a failed check (active), for
``down_time`` at least; a successful check brings it back. The candidates of a client are
all healthy brokers in balancing order, then the down ones (a pool entirely down is still
tried: refusing without trying would turn a check blip into an outage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import attrs

from gateway.choices import Balance

BALANCES = tuple(Balance)


@attrs.define(eq=False)
class Broker:
    host: str
    port: int
    index: int
    active: int = 0  # relayed sessions
    up: bool = True
    down_until: float = 0.0
    last_error: str | None = None
    failures: int = 0  # connects or checks that failed, since start
    sessions: int = 0  # sessions relayed, since start

    @property
    def name(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def weight(self, client_id: str) -> int:
        digest = hashlib.blake2b(f"{client_id}\0{self.name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")


class BrokerPool:
    def __init__(
        self,
        addresses: tuple[tuple[str, int], ...],
        balance: Balance | str = Balance.LEAST_CONN,
        down_time: float = 10.0,
        on_change: Callable[[Broker, str], None] = lambda broker, why: None,
    ) -> None:
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}")
        self.brokers = [Broker(host, port, i) for i, (host, port) in enumerate(addresses)]
        self.balance = balance
        self.down_time = down_time
        self.on_change = on_change  # called on every up/down transition (for the log)
        self._next = 0  # round robin position

    def candidates(self, client_id: str, now: float) -> list[Broker]:
        """Every broker, in the order a client should try them."""
        healthy = [b for b in self.brokers if self._usable(b, now)]
        down = [b for b in self.brokers if not self._usable(b, now)]
        if self.balance == Balance.CLIENT_ID:
            return sorted(healthy, key=lambda b: -b.weight(client_id)) + sorted(
                down, key=lambda b: -b.weight(client_id)
            )
        start = self._next
        self._next = (self._next + 1) % max(1, len(self.brokers))
        rotated = sorted(healthy, key=lambda b: (b.index - start) % len(self.brokers))
        if self.balance == Balance.LEAST_CONN:
            rotated.sort(key=lambda b: b.active)  # stable: ties keep the rotation
        return rotated + down

    def _usable(self, broker: Broker, now: float) -> bool:
        if broker.up:
            return True
        if now >= broker.down_until:
            return True  # its down time is over: worth a try (a success brings it up)
        return False

    # -- what happened --------------------------------------------------------------------

    def connected(self, broker: Broker) -> None:
        broker.active += 1
        broker.sessions += 1
        self._up(broker, "connected")

    def released(self, broker: Broker) -> None:
        broker.active = max(0, broker.active - 1)

    def failed(self, broker: Broker, now: float, error: str) -> None:
        """A connect (or a check) failed: down for ``down_time``."""
        broker.failures += 1
        broker.down_until = now + self.down_time
        broker.last_error = error
        if broker.up:
            broker.up = False
            self.on_change(broker, error)

    def check_ok(self, broker: Broker) -> None:
        self._up(broker, "health check passed")

    def _up(self, broker: Broker, why: str) -> None:
        if not broker.up:
            broker.up = True
            broker.last_error = None
            self.on_change(broker, why)
