"""The outbox on a real event log (SQLite, PostgreSQL) and a real bus: inline writes, batches."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from bus.client import Publisher
from bus.messages import State, new_task_id, utcnow
from bus.proxy import Proxy
from runner.task.outbox import Outbox
from store import Store

pytestmark = pytest.mark.timeout(60)


class Rig:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.store = Store(db_url, tmp_path / "events")
        self.store.create_schema()
        self.task_id = new_task_id()
        self.store.create_task(self.task_id, "test", True, {}, utcnow())
        front, back = f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/out.sock"
        self.proxy = Proxy(front, back)
        self.proxy.start()
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.connect(back)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.task_id.encode())
        self.pub = Publisher(front, self.ctx, linger_ms=1000)
        self._join()

    def _join(self) -> None:
        """Probe until the subscription has reached the publisher (no sleeping)."""
        deadline = time.monotonic() + 10
        probe = State(task_id=self.task_id, status="PENDING")
        while not self.sub.poll(20):
            assert time.monotonic() < deadline, "subscription never reached the publisher"
            self.pub.publish(self.task_id, probe)
        while self.sub.poll(100):
            self.sub.recv_multipart()

    def bus_event_ids(self, last: int) -> list[int]:
        ids: list[int] = []
        while not ids or ids[-1] < last:
            assert self.sub.poll(5000), f"bus went quiet after {ids[-1:]}"
            _topic, body = self.sub.recv_multipart()
            msg = msgspec.msgpack.decode(body)
            if msg["kind"] == "event":
                ids.append(msg["event_id"])
        return ids

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()
        self.proxy.stop()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path, db_url: str) -> Iterator[Rig]:
    r = Rig(tmp_path, db_url)
    yield r
    r.close()


def outbox(rig: Rig, heartbeat_interval: float = 1.0) -> Outbox:
    state = State(task_id=rig.task_id, status="RUNNING")
    box = Outbox(rig.store, rig.pub, rig.task_id, 1, state, heartbeat_interval)
    box.start()
    return box


# With heartbeats every millisecond the writer thread holds the PUB socket often: an event
# emitted meanwhile must still be written before emit returns (it waits for the claim).
@pytest.mark.parametrize("beat", [1.0, 0.001])
def test_paced_events_are_written_by_their_emitter_at_once(rig: Rig, beat: float) -> None:
    box = outbox(rig, beat)
    try:
        for i in range(1, 201 if beat < 0.01 else 21):
            box.emit("Engineer", "MESSAGE", {"i": i})
            # Written inline: durable and published when emit returns, no flush needed.
            assert box.last_event_id == i
            assert rig.store.last_event_id(rig.task_id) == i
            time.sleep(0.002)  # a pause: the next one goes inline too
        n = box.last_event_id
        assert rig.bus_event_ids(n) == list(range(1, n + 1))
    finally:
        box.close()


def test_many_emitters_bursts_and_pauses_keep_one_order_everywhere(rig: Rig) -> None:
    box = outbox(rig)
    per_thread, threads = 3000, 4
    errors: list[BaseException] = []

    def emitter(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for i in range(per_thread):
                box.emit("Engineer", "MESSAGE", {"thread": seed, "i": i})
                if rnd.random() < 0.01:
                    time.sleep(0.001)  # pauses make some of them inline, bursts make batches
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=emitter, args=(s,)) for s in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert not errors
        total = per_thread * threads
        assert box.flush(30)
        # The log: every id once, in order, each thread's payloads in its own order.
        rows = rig.store.read_events(rig.task_id, 0, total + 10)
        assert [i for i, _ in rows] == list(range(1, total + 1))
        seen: dict[int, int] = {}
        for _, data in rows:
            payload = msgspec.json.decode(data)["payload"]
            assert payload["i"] == seen.get(payload["thread"], -1) + 1
            seen[payload["thread"]] = payload["i"]
        # The bus: the same order (one publisher at a time on the PUB socket), nothing lost.
        assert rig.bus_event_ids(total) == list(range(1, total + 1))
    finally:
        box.close()


def test_each_event_is_logged_with_the_very_bus_body_it_was_published_as(rig: Rig) -> None:
    box = outbox(rig)
    try:
        for i in range(1, 301):
            box.emit("Engineer", "MESSAGE", {"i": i, "text": "é" * (i % 7)})
        assert box.flush(10)
        published: dict[int, bytes] = {}
        while len(published) < 300:
            assert rig.sub.poll(5000), f"bus went quiet after {len(published)} events"
            _topic, body = rig.sub.recv_multipart()
            msg = msgspec.msgpack.decode(body)
            if msg["kind"] == "event":
                published[msg["event_id"]] = body
    finally:
        box.close()
    logged = rig.store.read_event_bodies(rig.task_id, 0, 1000)
    assert [(i, b) for i, b, _ in logged] == sorted(published.items())
    assert all(d is None for _, _, d in logged)  # a body for every row: no JSON is read


def test_a_fast_run_is_written_by_its_emitter_in_batches_and_its_tail_after_it(
    rig: Rig,
) -> None:
    writes: list[tuple[str, int]] = []
    append = rig.store.append_events

    def recording(
        task_id: str, rows: list[tuple[int, bytes]], bodies: list[bytes] | None = None
    ) -> None:
        writes.append((threading.current_thread().name, len(rows)))
        append(task_id, rows, bodies)

    rig.store.append_events = recording  # type: ignore[method-assign]
    box = outbox(rig)
    total = 20_000
    try:
        for i in range(total):
            box.emit("Engineer", "MESSAGE", {"i": i})
        # The last events of the run wait for no further emit: the writer thread takes them
        # once the emitter has paused, without a flush.
        deadline = time.monotonic() + 10
        while box.last_event_id < total:
            assert time.monotonic() < deadline, f"tail not written: {box.last_event_id}"
            time.sleep(0.001)
        assert rig.bus_event_ids(total) == list(range(1, total + 1))
    finally:
        box.close()
    by_emitter = sum(n for name, n in writes if name == "MainThread")
    if rig.store.local_commits:
        # The run pays for most of its own writes (no GIL ping-pong with a writer thread), in
        # batches; generous, as a loaded machine deschedules the emitter (bench/ has the figures).
        assert by_emitter >= total * 0.5, writes[:20]
    else:
        # A server's commit is a round trip: the writer thread commits while the run goes on.
        assert by_emitter <= total * 0.1, writes[:20]
    assert len(writes) < total / 5, f"{len(writes)} commits for {total} events"


def _count_row_writes(rig: Rig) -> list[float]:
    """Times of the store's task-row writes (the real method runs)."""
    times: list[float] = []
    real = rig.store.save_state

    def save_state(task_id: str, columns: dict) -> None:  # type: ignore[type-arg]
        times.append(time.monotonic())
        real(task_id, columns)

    rig.store.save_state = save_state  # type: ignore[method-assign]
    return times


def test_the_task_row_is_written_less_often_than_states_are_published(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runner.task.state_throttle.STATE_INTERVAL", 0.02)
    monkeypatch.setattr("runner.task.task_row.ROW_INTERVAL", 0.3)
    rows = _count_row_writes(rig)
    box = outbox(rig)
    states = 0
    try:
        end = time.monotonic() + 1.0
        n = 0
        while time.monotonic() < end:
            n += 1
            box.emit("Engineer", "MESSAGE", {"n": n})
            box.set_state(progress=n / 1e6, last_message=f"{n}")
            while rig.sub.poll(0):
                _topic, body = rig.sub.recv_multipart()
                states += msgspec.msgpack.decode(body)["kind"] == "state"
            time.sleep(0.002)
        assert box.flush(5)
    finally:
        box.close()
    # Live clients got states all along (up to 50 in the second; generous for a loaded CI).
    assert states >= 5, states
    gaps = [b - a for a, b in itertools.pairwise(rows)]
    assert 2 <= len(rows) <= 6, rows  # ~1 s / ROW_INTERVAL, plus the flush's
    # Only the flush comes early: it writes the row already pending (the state before it) and
    # then the newest state, so the last two writes may both be early.
    assert all(g >= 0.29 for g in gaps[:-2]), gaps
    row = rig.store.get_task(rig.task_id)
    assert row is not None and row.last_message == f"{n}"  # the flush wrote the newest


def test_a_flush_writes_the_task_row_without_waiting_for_the_interval(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runner.task.task_row.ROW_INTERVAL", 3600.0)
    box = outbox(rig)
    try:
        box.set_state(progress=0.5, last_message="first")
        assert box.flush(5)  # the first row write
        box.set_state(progress=0.75, last_message="second")
        # Published on the bus in its own time; its row waits for the (hour-long) interval...
        while True:
            assert rig.sub.poll(5000), "the state was not published"
            msg = msgspec.msgpack.decode(rig.sub.recv_multipart()[1])
            if msg["kind"] == "state" and msg["last_message"] == "second":
                break
        assert rig.store.get_task(rig.task_id).last_message == "first"  # type: ignore[union-attr]
        assert box.flush(5)  # ...unless someone flushes
        box.record(exit_code=0)
        assert box.flush(5)
    finally:
        box.close()
    row = rig.store.get_task(rig.task_id)
    assert row is not None
    assert (row.progress, row.last_message, row.exit_code) == (0.75, "second", 0)


def test_an_emitter_running_flat_out_still_beats(rig: Rig) -> None:
    """The beats kept coming only when the writer thread got the log between the emitter's
    own writes; flat out it seldom did, and the supervisor killed a healthy task."""
    box = outbox(rig, heartbeat_interval=0.05)
    try:
        began = time.monotonic()
        i = 0
        while time.monotonic() - began < 2.0:
            box.emit("Engineer", "MESSAGE", {"i": i})
            i += 1
        ran_until = time.time()
    finally:
        box.close()  # (its beats stop: the bus goes quiet)
    beats: list[float] = []
    while rig.sub.poll(500):
        topic, body = rig.sub.recv_multipart()
        if topic.endswith(b"/heartbeat"):
            beats.append(msgspec.msgpack.decode(body)["sent_at"])
    during = [t for t in beats if t <= ran_until]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) >= 10 and max(gaps) < 0.5, (len(during), max(gaps, default=None), i)
