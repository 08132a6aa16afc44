"""The gateway's shared log reader, over a real event log: per-task SQLite files and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from bus.messages import Event, State, bus_encoder, event_data_json, ws_frame
from gateway.frames import seed_to_msgpack
from gateway.logreader import LogReader
from store import Store
from store.eventlog import EventLogUnreadable

pytestmark = pytest.mark.timeout(60)
TASK = "t-1"


def data(i: int) -> bytes:
    return b'{"event_id":%d,"task_id":"%s","x":"%s"}' % (i, TASK.encode(), b"y" * 40)


def frame(i: int) -> bytes:
    return ws_frame("event", data(i))


@pytest.fixture
def store(db_store: Store) -> Store:
    return db_store  # (tests/conftest.py: on each backend)


def append(store: Store, ids: range) -> None:
    store.append_events(TASK, [(i, data(i)) for i in ids])


async def read_all(reader: LogReader, after: int = 0) -> list[int]:
    got: list[int] = []
    while rows := await reader.read(TASK, after):
        got += [i for i, _ in rows]
        after = rows[-1][0]
    return got


def test_follows_a_growing_log_block_by_block(store: Store) -> None:
    async def main() -> None:
        reader = LogReader(store, block=10, first_read=10)
        assert await reader.read(TASK, 0) == []  # no log yet
        append(store, range(1, 8))
        rows = await reader.read(TASK, 0)
        assert rows == [(i, frame(i)) for i in range(1, 8)]
        assert await reader.read(TASK, 7) == []  # nothing newer: not a stale "more"
        append(store, range(8, 26))
        assert await read_all(reader, 3) == list(range(4, 26))  # across block boundaries

    asyncio.run(main())


def test_connections_on_one_task_share_each_database_read(store: Store) -> None:
    append(store, range(1, 101))

    async def main() -> None:
        reader = LogReader(store, block=50, first_read=50)
        results = await asyncio.gather(*(read_all(reader) for _ in range(20)))
        assert all(r == list(range(1, 101)) for r in results)
        # 2 full blocks and the empty third (the tail), each read once for all 20 readers.
        assert reader.db_reads <= 4, reader.db_reads
        # A late reader is served from memory.
        before = reader.db_reads
        assert await read_all(reader, 60) == list(range(61, 101))
        assert reader.db_reads - before <= 1  # only the tail is asked again

    asyncio.run(main())


def test_a_gap_in_ids_is_skipped_not_taken_for_the_end(store: Store) -> None:
    # A task restarted after losing unwritten events may leave ids unused.
    append(store, range(1, 5))
    store.append_events(TASK, [(i, data(i)) for i in (27, 28)])

    async def main() -> None:
        reader = LogReader(store, block=10, first_read=10)
        assert await read_all(reader) == [1, 2, 3, 4, 27, 28]

    asyncio.run(main())


def test_a_reader_that_leaves_does_not_cancel_the_read_others_wait_for(store: Store) -> None:
    append(store, range(1, 31))

    async def main() -> None:
        reader = LogReader(store, block=100, first_read=100)
        leaver = asyncio.create_task(reader.read(TASK, 0))
        stayer = asyncio.create_task(reader.read(TASK, 10))
        await asyncio.sleep(0)  # both are waiting on the one read now
        leaver.cancel()
        rows = await asyncio.wait_for(stayer, 10)
        assert [i for i, _ in rows] == list(range(11, 31))
        assert reader.db_reads == 1

    asyncio.run(main())


def test_memory_stays_within_budget_and_evicted_blocks_are_read_again(store: Store) -> None:
    append(store, range(1, 1001))

    async def main() -> None:
        reader = LogReader(
            store, block=100, budget_bytes=30_000, first_read=100
        )  # ~2 blocks of ~130-char rows
        assert await read_all(reader) == list(range(1, 1001))
        assert reader._size <= 30_000 + 100 * 200  # the block being read may exceed it
        before = reader.db_reads
        assert await read_all(reader) == list(range(1, 1001))
        assert reader.db_reads - before >= 8  # the early blocks had gone

    asyncio.run(main())


def test_an_unreadable_log_raises_to_every_waiting_reader(store: Store, tmp_path: Path) -> None:
    expected: type[Exception]
    if store.url.startswith("sqlite"):
        (tmp_path / "events").mkdir(exist_ok=True)
        (tmp_path / "events" / f"{TASK}.db").write_bytes(b"not a database" * 100)
        expected = sqlite3.DatabaseError
    else:  # the table is gone: an error, never "no events"
        with store._write.begin() as c:
            c.execute(text("DROP TABLE events"))
        expected = ProgrammingError

    async def main() -> None:
        reader = LogReader(store, block=10, first_read=10)
        results = await asyncio.gather(
            reader.read(TASK, 0), reader.read(TASK, 3), return_exceptions=True
        )
        assert all(isinstance(r, expected) for r in results), results

    asyncio.run(main())


def test_blocks_are_bounded_by_bytes_and_reads_by_the_row_size(store: Store) -> None:
    big = b"z" * 100_000
    store.append_events(
        TASK, [(i, b'{"event_id":%d,"task_id":"t-1","x":"%s"}' % (i, big)) for i in range(1, 101)]
    )

    async def main() -> None:
        reader = LogReader(store, block=2000, block_bytes=500_000, budget_bytes=1_000_000)
        sizes: list[int] = []
        after = 0
        while rows := await reader.read(TASK, after):
            sizes.append(sum(len(f) for _, f in rows))
            assert [i for i, _ in rows] == list(range(after + 1, after + 1 + len(rows)))
            after = rows[-1][0]
            assert reader._size <= 1_000_000 + 500_000 + 100_200  # budget, one block, one row
        assert after == 100
        assert max(sizes) <= 500_000 + 100_200  # a block stops at the row reaching its size
        # A few rows first (their size unknown), then as many as fit: ~20 reads, not 100.
        assert reader.db_reads < 40, reader.db_reads

    asyncio.run(main())


def test_forget_drops_an_ended_tasks_blocks(store: Store) -> None:
    append(store, range(1, 301))

    async def main() -> None:
        reader = LogReader(store, block=100, first_read=100)
        assert await read_all(reader) == list(range(1, 301))
        assert reader._size > 0 and reader._starts
        reader.forget(TASK)
        assert reader._size == 0 and not reader._blocks and not reader._starts
        assert not reader._row_size
        assert await read_all(reader) == list(range(1, 301))  # read again on demand

    asyncio.run(main())


def _event(i: int) -> Event:
    return Event(event_id=i, task_id=TASK, timestamp="ts", agent_role="r", event_type="E",
                 payload={"seq": i, "t": i / 3})  # fmt: skip


def test_binary_readers_get_the_logged_bodies_as_they_are(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored bus bodies are sent byte for byte (a body the JSON would not give proves it);
    rows logged without one (an older log) are converted, once, on a mixed page too."""
    from gateway import logreader

    def body(i: int) -> bytes:  # the same event with a payload the JSON row does not have
        return bus_encoder.encode(msgspec.structs.replace(_event(i), payload={"from": "body"}))

    # 1-30 logged before bodies were stored, 31-70 with them, 71-100 without again
    store.append_events(TASK, [(i, event_data_json(_event(i))) for i in range(1, 31)])
    ids = range(31, 71)
    store.append_events(
        TASK, [(i, event_data_json(_event(i))) for i in ids], [body(i) for i in ids]
    )
    store.append_events(TASK, [(i, event_data_json(_event(i))) for i in range(71, 101)])
    want = {
        i: seed_to_msgpack(ws_frame("event", event_data_json(_event(i)))) for i in range(1, 101)
    }
    want |= {i: body(i) for i in ids}
    converted: list[int] = []
    real = logreader.events_to_msgpack

    def counting(frames: list[bytes]) -> list[bytes]:
        converted.append(len(frames))
        return real(frames)

    monkeypatch.setattr(logreader, "events_to_msgpack", counting)

    async def main() -> None:
        reader = LogReader(store, block=40, first_read=40)
        for _ in range(3):  # three binary connections reading the whole log
            after = 0
            while rows := await reader.read(TASK, after, binary=True):
                assert rows == [(i, want[i]) for i, _ in rows]
                after = rows[-1][0]
            assert after == 100
        rows = await reader.read(TASK, 55, binary=True)  # a resume in the middle of a block
        assert rows[0] == (56, body(56))
        # JSON readers of the same log get their frames, from blocks of their own
        assert await reader.read(TASK, 0) == [(i, frame_of(i)) for i in range(1, 41)]

    def frame_of(i: int) -> bytes:
        return ws_frame("event", event_data_json(_event(i)))

    asyncio.run(main())
    assert sum(converted) == 60  # each row without a body once, for all the connections


def test_a_read_under_way_before_new_rows_does_not_hide_them(store: Store) -> None:
    """A caller that joins a shared read begun before rows it knows are committed (a final
    state's events) must still get them: that read's "nothing new" is not its answer."""
    import threading

    append(store, range(1, 6))
    gate, snapped = threading.Event(), threading.Event()
    real = store.read_events

    def snapshot_then_wait(task_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        rows = real(task_id, after, limit)  # what the log held when the read began
        snapped.set()
        gate.wait(10)
        return rows

    async def main() -> None:
        reader = LogReader(store, block=50, first_read=50)
        assert await read_all(reader) == [1, 2, 3, 4, 5]
        store.read_events = snapshot_then_wait  # type: ignore[method-assign]
        early = asyncio.ensure_future(reader.read(TASK, 5))  # begins a read: nothing new yet
        await until_reading(reader)
        # (Not just begun: its worker thread has read the log, else it could see the rows.)
        assert await asyncio.to_thread(snapped.wait, 10)
        store.read_events = real  # type: ignore[method-assign]
        append(store, range(6, 11))  # committed while that read is under way
        late = asyncio.ensure_future(reader.read(TASK, 5, logged=True))  # joins, reads afresh
        await asyncio.sleep(0)
        gate.set()
        assert await early == []  # it asked before the rows existed: fair
        assert [i for i, _ in await late] == [6, 7, 8, 9, 10]

    asyncio.run(main())


async def until_reading(reader: LogReader) -> None:
    for _ in range(1000):
        if any(b.reading is not None for b in reader._blocks.values()):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no read under way")


@pytest.mark.parametrize(
    "forged",
    [
        "a state",
        "another event's id",
        "another task's event",
        "an extra field",
        "a second object",
        "not MessagePack",
    ],
)
def test_a_body_that_is_not_its_events_makes_the_binary_stream_unreadable(
    store: Store, forged: str
) -> None:
    """The live path drops what is not an event of its task; the log path must too (a task
    could otherwise forge, say, a final state for its binary clients)."""
    ev = _event(2)
    body = {
        "a state": bus_encoder.encode(State(task_id=TASK, status="COMPLETED")),
        "another event's id": bus_encoder.encode(_event(3)),
        "another task's event": bus_encoder.encode(msgspec.structs.replace(ev, task_id="x" * 36)),
        "an extra field": bus_encoder.encode(ev)[:-1] + b"\xa5extra\xa1x",
        "a second object": bus_encoder.encode(ev) + bus_encoder.encode(_event(3)),
        "not MessagePack": b"\xc1",
    }[forged]
    if forged == "an extra field":  # one more key in the map header
        body = bytes([body[0] + 1]) + body[1:]
    store.append_events(
        TASK,
        [(i, event_data_json(_event(i))) for i in (1, 2)],
        [bus_encoder.encode(_event(1)), body],
    )

    async def main() -> None:
        reader = LogReader(store, block=40, first_read=40)
        assert [i for i, _ in await reader.read(TASK, 0, binary=True)] == [1]  # before it
        with pytest.raises(EventLogUnreadable, match="event 2's bus body"):
            await reader.read(TASK, 1, binary=True)
        assert [i for i, _ in await reader.read(TASK, 0)] == [1, 2]  # JSON readers: unaffected

    asyncio.run(main())


def test_a_json_row_that_carries_a_second_message_makes_the_stream_unreadable(
    store: Store,
) -> None:
    """Spliced into a batch frame, ``...}},{"type":"state",...`` would be a forged final
    state; the row is refused on both databases, for JSON and binary readers alike."""
    forged = event_data_json(_event(2))[:-1] + b'}},{"type":"state","data":{"status":"FAILED"}'
    store.append_events(TASK, [(1, event_data_json(_event(1))), (2, forged)])

    async def main() -> None:
        for binary in (False, True):
            reader = LogReader(store, block=40, first_read=40)
            assert [i for i, _ in await reader.read(TASK, 0, binary=binary)] == [1]
            with pytest.raises(EventLogUnreadable, match="event 2's JSON is not that event's"):
                await reader.read(TASK, 1, binary=binary)

    asyncio.run(main())
