"""The sans-IO parts of the workers: CRL snapshots, the master's record of the files a
start read, the counters added up, the socket group and its address affinity."""

from __future__ import annotations

import io
import mmap
import os
import select
import socket
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import files
from gateway.choices import Affinity
from gateway.config.values import format_workers, parse_workers
from gateway.demo import pki
from gateway.prepare import prepare
from gateway.process import GatewayState
from gateway.reports import merge_stats, stats_from_dict
from gateway.revocation import worker
from gateway.revocation.crl import CrlError, decode_answer
from gateway.revocation.crl_service import CrlCache
from gateway.revocation.process import encode_request
from gateway.revocation.snapshot import decode_snapshot, encode_snapshot
from gateway.status import HistogramSnapshot, StatsSnapshot
from gateway.workers.sockets import bind_group, close_all, steer_by_address
from tests.unit.test_crl_core import make_crl, pem


class _Clock:
    def seconds(self) -> float:
        return time.time()


def _loaded(serials: list[int], number: int = 1) -> list:
    root = pki.make_ca("snap root")
    inter = pki.make_ca("snap inter", issuer=root)
    body = pem(make_crl(inter, serials, number=number), make_crl(root, [7]))
    out = io.BytesIO()
    header = encode_request(pki.cert_pem(root.cert, inter.cert), time.time(), 300, None, "u", [])
    worker.main(io.BytesIO(header + body), out)
    return decode_answer(out.getvalue())


def test_snapshot_round_trip_through_a_mapped_file(tmp_path: object) -> None:
    """What a worker maps answers every lookup as the master's cache does."""
    serials = list(range(10_000, 10_500)) + [2**150]
    loaded = _loaded(serials)
    cache = CrlCache(_Clock(), 0)
    for crl in loaded:
        cache.install(crl, "http://ca/x.crl")
    path = os.path.join(str(tmp_path), "snap")
    with open(path, "wb") as f:
        for chunk in encode_snapshot(cache.held()):
            f.write(chunk)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    items = decode_snapshot(mapped)
    assert [u for u, _ in items] == ["http://ca/x.crl"] * 2
    worker_cache = CrlCache(_Clock(), 0)
    worker_cache.replace(items)
    for crl in loaded:
        issuer = crl.info.issuer
        for serial in (10_000, 10_499, 2**150, 7, 9_999, 10_500):
            assert worker_cache.status(issuer, serial) == cache.status(issuer, serial)
    assert worker_cache.status(loaded[0].info.issuer, 10_250) == "revoked"
    assert worker_cache.status(loaded[0].info.issuer, 1) == "good"
    # The master adopts the mapped copy: same answers, its heap copy released.
    cache.adopt([(old, new) for (_, old), (_, new) in zip(cache.held(), items, strict=True)])
    assert all(isinstance(c.index.blob, mmap.mmap) for _, c in cache.held())
    assert cache.status(loaded[0].info.issuer, 10_250) == "revoked"


def test_empty_snapshot_means_no_crl() -> None:
    data = b"".join(bytes(c) for c in encode_snapshot([]))
    assert decode_snapshot(data) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_a_broken_snapshot_is_refused_cleanly(data: bytes) -> None:
    """Any bytes: a CrlError, never another exception."""
    try:
        decode_snapshot(data)
    except CrlError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    ),
    st.binary(max_size=40),
)
def test_a_snapshot_with_a_hostile_header_is_refused_cleanly(header: object, rest: bytes) -> None:
    import json

    for doc in (header, {"ok": True, "format": 1, "crls": header}, {"format": 1, "crls": [header]}):
        try:
            decode_snapshot(json.dumps(doc).encode() + b"\n" + rest)
        except CrlError:
            pass


def test_truncated_snapshot_is_refused() -> None:
    items = [("u", crl) for crl in _loaded([1, 2, 3])]
    data = b"".join(bytes(c) for c in encode_snapshot(items))
    with pytest.raises(CrlError):
        decode_snapshot(data[:-1])
    with pytest.raises(CrlError):
        decode_snapshot(data + b"x")


def test_workers_value() -> None:
    assert parse_workers("auto") == 0 and format_workers(0) == "auto"
    assert parse_workers(" 4 ") == 4 and format_workers(4) == "4"
    for bad in ("0", "-1", "257", "many", ""):
        with pytest.raises(ValueError):
            parse_workers(bad)


def test_a_worker_prepares_from_the_masters_record(tmp_path: object) -> None:
    """The worker gets the bytes the master read, and needs no access to the files."""
    d = str(tmp_path)
    root = pki.make_ca("rec root")
    cert, key = pki.issue(root, "localhost", server=True).write(d, "server")
    ca = pki.write_ca_bundle(os.path.join(d, "ca.pem"), root)
    conf = os.path.join(d, "gw.conf")
    with open(conf, "w") as f:
        f.write(
            f"workers = 3\nlistener.ssl.a = 18883\nlistener.ssl.a.certfile = {cert}\n"
            f"listener.ssl.a.keyfile = {key}\nlistener.ssl.a.cacertfile = {ca}\n"
            "listener.ssl.a.upstream = 127.0.0.1:1883\n"
        )
    master = prepare(conf)
    assert set(master.files) == {conf, cert, key, ca}
    assert stat.S_IMODE(master.files[key][1]) == stat.S_IMODE(os.stat(key).st_mode)
    for path in master.files:
        os.unlink(path)  # gone from the disk: the worker reads the record only
    replica = prepare(conf, files.FileRecord.replaying(master.files))
    assert replica.config.globals.workers == 3
    a, b = master.materials["a"], replica.materials["a"]
    assert a.chain == b.chain and a.ca_pem == b.ca_pem
    with pytest.raises(FileNotFoundError):
        files.FileRecord.replaying({}).read(conf)


def _stats(name: str, active: int, refused: dict[str, int], hs: tuple[int, ...]) -> StatsSnapshot:
    h = HistogramSnapshot((0.1, 1.0), hs, float(sum(hs)))
    return StatsSnapshot(name, active, active * 2, refused, 10, 20, {"client": 1}, h, None)


def test_worker_counters_add_up() -> None:
    import attrs

    parts = [
        _stats("l", 3, {"revoked": 1}, (1, 2, 3)),
        _stats("l", 4, {"revoked": 2, "x": 1}, (0, 1, 1)),
    ]
    again = [stats_from_dict(attrs.asdict(p)) for p in parts]
    assert again == parts
    total = merge_stats("l", again)
    assert total.active == 7 and total.accepted == 14 and total.bytes_in == 20
    assert total.refused == {"revoked": 3, "x": 1} and total.closed == {"client": 2}
    assert total.handshake_seconds is not None
    assert total.handshake_seconds.cumulative == (1, 3, 4)
    assert total.upstream_connect_seconds is None


def _accepting(group: list[socket.socket]) -> int:
    ready, _, _ = select.select(group, [], [], 2)
    assert ready, "no socket got the connection"
    conn, _ = ready[0].accept()
    conn.close()
    return group.index(ready[0])


def test_socket_group_steers_by_address() -> None:
    """One socket per worker on one port; with address affinity, the socket that gets a
    connection depends on the client's address only."""
    group = bind_group("127.0.0.1", 0, 4)
    try:
        port = group[0].getsockname()[1]
        assert {s.getsockname()[1] for s in group} == {port}
        assert steer_by_address(group)
        seen: dict[str, set[int]] = {}
        for i in range(1, 9):
            source = f"127.0.0.{i}"
            for _ in range(3):
                c = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
                seen.setdefault(source, set()).add(_accepting(group))
                c.close()
        assert all(len(v) == 1 for v in seen.values())
        assert {next(iter(v)) for v in seen.values()} == {0, 1, 2, 3}
        assert seen["127.0.0.4"] == {4 % 4} and seen["127.0.0.7"] == {7 % 4}
    finally:
        close_all(group)


def test_socket_group_port_in_use() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError) as info:
            bind_group("127.0.0.1", taken.getsockname()[1], 2)
        assert "in use" in str(info.value).lower()
    finally:
        taken.close()


def test_worker_log_records_become_master_log_events() -> None:
    """A worker's records (RS, JSON [time, level, namespace, text], newline) are re-emitted
    in the master's log behind ``worker N:``, whatever the pipe's chunking; anything else
    on its stderr (a crash before logging started) is logged as text, never lost."""
    import json

    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    from gateway.workers.logrelay import WorkerProcess

    seen: list[dict] = []  # type: ignore[type-arg]
    globalLogPublisher.addObserver(seen.append)
    try:
        proc = WorkerProcess(3, lambda reason: None)
        records = b"".join(
            b"\x1e" + json.dumps(r).encode() + b"\n"
            for r in (
                [1.5, "info", "gateway.proxy.relay", "accepted ext peer=10.0.0.1:5 {x}"],
                [2.5, "error", "gateway.service", "line one\nTraceback: two"],
            )
        )
        for i in range(0, len(records), 7):  # split anywhere
            proc.errReceived(records[i : i + 7])
        proc.errReceived(b"Traceback (most recent call last):\n  boom\n")
        mine = [e for e in seen if e.get("mqttgw_worker") == 3 or e.get("index") == 3]
        texts = [formatEvent(e) for e in mine]
        assert texts[0] == "worker 3: accepted ext peer=10.0.0.1:5 {x}"
        assert mine[0]["log_level"] is LogLevel.info and mine[0]["log_time"] == 1.5
        assert texts[1] == "worker 3: line one\nTraceback: two"
        assert mine[1]["log_level"] is LogLevel.error
        assert any("worker 3: Traceback (most recent call last):" in t for t in texts)
        assert any("worker 3:   boom" in t for t in texts)
    finally:
        globalLogPublisher.removeObserver(seen.append)


def test_a_workers_log_text_reads_as_twisteds() -> None:
    """The worker formats its lines the short way (str.format_map) where that gives what
    Twisted's formatter gives, and Twisted's way otherwise: a traceback, a call in a field,
    a missing field, a format that is not text."""
    from twisted.logger import eventAsText
    from twisted.python.failure import Failure

    from gateway.workers.child import _event_text

    class Obj:
        name = "sub"

        def __repr__(self) -> str:
            return "<obj>"

    def twisted(event: dict) -> str:  # type: ignore[type-arg]
        return eventAsText(event, includeTimestamp=False, includeSystem=False)

    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    events = [
        {
            "log_format": "accepted {a} id={b!r} d={c:.1f}s {{x}} {o.name}",
            "a": "é",
            "b": "x",
            "c": 0.04,
            "o": Obj(),
        },
        {"log_format": "obj {o} {o!r}", "o": Obj()},
        {"log_format": "missing {nope}"},
        {"log_format": "call {f()}", "f": lambda: "called"},
        {"log_format": "failed {x}", "x": 1, "log_failure": failure},
        {"log_format": None, "log_io": "raw"},
        {"log_format": b"bytes {x}", "x": 2},
        {"log_format": "bad spec {x:Q}", "x": 3},
    ]
    for event in events:
        assert _event_text(event) == twisted(event), event
    assert "ValueError: boom" in _event_text(events[4])


def test_a_dying_worker_is_restarted_with_backoff() -> None:
    """Each short life doubles the wait before the next start (0.5 s up to 30 s); a worker
    that lived a minute starts again after 0.5 s; a stopping master restarts nothing."""
    from twisted.internet import error as terror
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure

    from gateway.workers import pool as M

    clock = Clock()
    pool = M.WorkerPool(clock, GatewayState(None), 1, Affinity.AUTO)  # type: ignore[arg-type]
    starts: list[float] = []
    pool._spawn = lambda slot: (
        starts.append(clock.seconds()),
        setattr(slot, "started", clock.seconds()),
    )  # type: ignore[method-assign]
    slot = pool.slots[0]
    slot.started = 0.0
    delays = []
    for _ in range(9):
        pool.ended(slot, Failure(terror.ProcessTerminated(signal=9)))
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert slot.restarts == 9 and slot.last_exit == "killed by signal 9"
    clock.advance(61)  # a long life: back to the first delay
    pool.ended(slot, Failure(terror.ProcessDone(0)))
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 0.5 and slot.last_exit == "exited with status 0"
    clock.advance(0.5)
    pool.stopping = True
    pool.ended(slot, Failure(terror.ProcessDone(0)))
    assert clock.getDelayedCalls() == [] and slot.state == "stopped"
