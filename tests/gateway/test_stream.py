"""The WebSocket bridge (gateway.stream) alone: a real store and log reader, no processes.

The hub is real but fed by the test (its listener is offered items as the bus would), the
WebSocket is a recorder: so a gap, a duplicate, an overflow or a final state is placed exactly
where the test wants it, and a failure names this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq.asyncio

from bus.messages import (
    Event,
    State,
    bus_encoder,
    event_data_json,
    json_encoder,
    state_data,
    topic,
    ws_frame,
)
from core import settings
from core.clock import utcnow
from core.status import TaskStatus
from gateway.frames import Format, FrameWriter
from gateway.hub import Hub, Listener, LiveEvent, LiveState
from gateway.logreader import LogReader
from gateway.stream import MOVES, InvalidTransition, Phase, TaskStream
from gateway.wsprotocol import SEND_TEXTS
from store import Store

pytestmark = pytest.mark.timeout(60)
TID = "00000000-0000-4000-8000-000000000001"
QUEUE = 4


class Client:
    """Records what the bridge sends; ``receive`` waits until the test hangs up."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.gone = asyncio.Event()

    async def accept(self, subprotocol: str | None = None) -> None:
        pass

    async def send_text(self, text: str) -> None:
        msg = json.loads(text)
        self.sent += msg if isinstance(msg, list) else [msg]  # (a batch frame: its messages)

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def close(self, code: int = 1000) -> None:
        self.close_code = code

    def of(self, msg_type: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.sent if m["type"] == msg_type]

    @property
    def event_ids(self) -> list[int]:
        return [d["event_id"] for d in self.of("event")]


class Traced(TaskStream):
    """The bridge, recording each phase it moves to."""

    trail: list[Phase]

    def _move(self, new: Phase) -> None:
        super()._move(new)
        self.trail.append(new)


def event(i: int) -> Event:
    return Event(
        event_id=i,
        task_id=TID,
        timestamp=utcnow(),
        agent_role="Engineer",
        event_type="MESSAGE",
        payload={"i": i},
    )


def log_events(store: Store, ids: range) -> None:
    store.append_events(TID, [(i, event_data_json(event(i))) for i in ids])


def live_event(i: int) -> LiveEvent:
    return LiveEvent(i, ws_frame("event", event_data_json(event(i))))


def live_state(st: State) -> LiveState:
    return LiveState(st, ws_frame("state", json_encoder.encode(state_data(st))))


async def until(fn: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)
    return value


class Rig:
    def __init__(self, tmp_path: Path, fmt: Format = Format.JSON) -> None:
        self.cfg = settings.load({"METASTREAM_HOME": str(tmp_path), "METASTREAM_WS_QUEUE": "4"})
        self.store = Store(f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "events")
        self.store.create_schema()
        self.store.create_task(TID, "req", False, {}, utcnow())
        self.store.transition(TID, TaskStatus.QUEUED)
        self.store.transition(TID, TaskStatus.RUNNING)
        self.store.open_events(TID)
        self.ctx = zmq.asyncio.Context()
        # Nothing is bound there: the hub's socket is real, its messages come from the test.
        self.hub = Hub(f"ipc://{tmp_path}/nobody.sock", self.ctx, QUEUE)
        self.client = Client()
        self.stream = Traced(
            self.client,  # type: ignore[arg-type]
            TID,
            0,
            store=self.store,
            log=LogReader(self.store, block=16),
            hub=self.hub,
            control=None,  # type: ignore[arg-type]  # autostart is off: never asked
            cfg=self.cfg,
            autostart=False,
            fmt=fmt,
        )
        self.stream.trail = []
        self.listener: Listener | None = None
        attach = self.hub.attach

        def attached(task_id: str) -> Listener:
            self.listener = attach(task_id)
            return self.listener

        self.hub.attach = attached  # type: ignore[method-assign]

    def close(self) -> None:
        self.hub.close()
        self.ctx.term()
        self.store.close()


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, logged: int) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    log_events(rig.store, range(1, logged + 1))
    runner = asyncio.create_task(rig.stream.run())
    try:
        await until(lambda: rig.stream.phase is Phase.LIVE, "the replay to end")
        yield rig
    finally:
        rig.client.gone.set()
        await asyncio.wait_for(runner, 10)
        assert rig.stream.phase is Phase.CLOSED
        rig.close()


def test_a_gap_is_refilled_from_the_log_and_duplicates_are_dropped(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, 3) as rig:
            assert rig.client.event_ids == [1, 2, 3]
            assert [m["type"] for m in rig.client.sent[:2]] == ["connected", "state"]
            log_events(rig.store, range(4, 8))
            assert rig.listener is not None
            rig.listener.offer(live_event(6))  # 4 and 5 never came live
            # The gap is refilled from the log: everything logged so far, 7 included.
            await until(lambda: rig.client.event_ids[-1:] == [7], "events 4 to 7")
            for late in (5, 6, 7):  # duplicates of what the log gave: dropped
                rig.listener.offer(live_event(late))
            log_events(rig.store, range(8, 9))
            rig.listener.offer(live_event(8))
            await until(lambda: rig.client.event_ids[-1:] == [8], "event 8")
            assert rig.client.event_ids == [1, 2, 3, 4, 5, 6, 7, 8]

    asyncio.run(body())


def test_an_overflowed_connection_is_served_from_the_log_then_goes_live(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, 2) as rig:
            listener = rig.listener
            assert listener is not None and rig.hub.subscribed(TID)
            log_events(rig.store, range(3, 101))
            for i in range(3, 13):  # more than the queue holds, before the bridge runs again
                listener.offer(live_event(i))
            assert listener.overflowed and not rig.hub.subscribed(TID)  # the log's job now
            await until(lambda: rig.client.event_ids[-1:] == [100], "the log's 100 events")
            await until(lambda: rig.stream.trail[-1] is Phase.LIVE, "live again")
            assert rig.stream.trail == [Phase.REPLAYING, Phase.LIVE, Phase.BEHIND, Phase.LIVE]
            assert not listener.overflowed and rig.hub.subscribed(TID)
            log_events(rig.store, range(101, 102))
            listener.offer(live_event(101))
            await until(lambda: rig.client.event_ids[-1:] == [101], "a live event again")
            assert rig.client.event_ids == list(range(1, 102))  # each once, in order

    asyncio.run(body())


def test_a_final_state_ends_the_stream_only_when_the_store_agrees(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, 5) as rig:
            assert rig.listener is not None
            forged = State(task_id=TID, status="COMPLETED", version=99)
            rig.listener.offer(live_state(forged))  # the store still says RUNNING
            log_events(rig.store, range(6, 9))
            rig.listener.offer(live_event(6))
            await until(lambda: rig.client.event_ids[-1:] == [6], "event 6")
            assert rig.client.close_code is None and rig.stream.phase is Phase.LIVE
            ended = rig.store.transition(
                TID, TaskStatus.COMPLETED, completed_at=utcnow(), last_event_id=8, progress=1.0
            )
            rig.listener.offer(live_state(State(task_id=TID, status="COMPLETED", version=3)))
            await until(lambda: rig.client.close_code == 1000, "the close")
            # Every event before the final state, the final state last, from the store.
            assert rig.client.event_ids == list(range(1, 9))
            assert rig.client.sent[-1]["type"] == "state"
            assert rig.client.sent[-1]["data"]["completed_at"] == ended.completed_at
            await until(lambda: rig.stream.phase is Phase.CLOSED, "the end of the connection")
            assert rig.stream.trail[-2:] == [Phase.CLOSING, Phase.CLOSED]

    asyncio.run(body())


def test_the_phase_table_refuses_a_skipped_step(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        with pytest.raises(InvalidTransition, match="expected replaying or behind, got connecting"):
            rig.stream._move(Phase.LIVE)
        assert all(Phase.CLOSED in MOVES[p] for p in Phase if p is not Phase.CLOSED)
        assert MOVES[Phase.CLOSED] == frozenset()
    finally:
        rig.close()


class DirectClient(Client):
    """A client whose server offers the gateway protocol's many-frame and direct writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writable = True
        self.direct = 0  # messages written by the hub itself (writer_for)

        async def many(frames: list[bytes]) -> None:
            for f in frames:
                self._record(f)

        def writer_for(wire: bytes) -> DirectClient | None:
            return self if self.writable else None

        ext = {"send_texts": many, "send_binaries": many, "writer_for": writer_for}
        self.scope = {"extensions": {SEND_TEXTS: ext}}

    def write(self, wire: bytes) -> None:
        """A whole frame the hub wrote directly (the transport's part in the server)."""
        self.direct += 1
        code = wire[1] & 0x7F
        self._record(wire[2 if code < 126 else 4 if code == 126 else 10 :])

    def _record(self, payload: bytes) -> None:
        if payload[:1] in (b"{", b"["):
            obj = json.loads(payload)
            self.sent += obj if isinstance(obj, list) else [obj]
        else:
            obj = msgspec.msgpack.decode(payload)
            for m in obj if isinstance(obj, list) else [obj]:
                self.sent.append({"type": m.pop("kind"), "data": m})


@pytest.mark.parametrize("fmt", list(Format))
def test_the_hub_writes_live_events_to_idle_connections_exactly_in_order(
    tmp_path: Path, fmt: Format
) -> None:
    async def body() -> None:
        rig = Rig(tmp_path)
        client = rig.client = DirectClient()
        rig.stream.ws = client  # type: ignore[assignment]
        rig.stream.out = FrameWriter(client, fmt)  # type: ignore[arg-type]
        log_events(rig.store, range(1, 4))
        runner = asyncio.create_task(rig.stream.run())
        try:
            await until(lambda: rig.stream.phase is Phase.LIVE, "the replay to end")
            assert rig.listener is not None
            listener = rig.listener
            for i in range(4, 41):
                log_events(rig.store, range(i, i + 1))
                if i % 10 == 0:  # a state between events: queued, the task sends it
                    st = State(task_id=TID, status="RUNNING", progress=i / 100, version=i)
                    rig.hub._dispatch([topic(TID, "state"), bus_encoder.encode(st)])
                client.writable = i % 7 != 0  # a paused transport: the ordinary path
                if i % 3:  # mostly while the connection is parked, sometimes not
                    await until(
                        lambda: listener.direct is not None and not listener.items,
                        "the connection idle",
                    )
                rig.hub._dispatch([topic(TID, "event"), bus_encoder.encode(event(i))])
            await until(lambda: client.event_ids[-1:] == [40], "event 40")
            assert client.event_ids == list(range(1, 41))  # each once, in order
            assert 15 < client.direct < 41  # both paths were taken
            # Each state exactly where it was dispatched: after event i - 1, before event i.
            order = [
                m["data"]["event_id"] if m["type"] == "event" else m["data"]["progress"]
                for m in client.sent
                if m["type"] == "event" or m["data"].get("progress", 0) >= 0.1
            ]
            for i in (10, 20, 30, 40):
                at = order.index(i / 100)
                assert order[at - 1 : at + 2] == [i - 1, i / 100, i]
        finally:
            client.gone.set()
            await asyncio.wait_for(runner, 10)
            rig.close()

    asyncio.run(body())


def test_a_forged_log_row_is_a_clear_error_not_a_forged_message(tmp_path: Path) -> None:
    """A task spliced a second message into a row of its own log: the batched client is told
    the log is unreadable (error, 1011) and never sees the forged state."""

    async def body() -> None:
        rig = Rig(tmp_path, Format.BATCH)
        forged = event_data_json(event(2))[:-1] + b'}},{"type":"state","data":{"status":"FAILED"}'
        rig.store.append_events(TID, [(1, event_data_json(event(1))), (2, forged)])
        try:
            await asyncio.wait_for(rig.stream.run(), 10)
            assert rig.client.close_code == 1011
            assert rig.client.of("error")[0]["message"].endswith(
                "event 2's JSON is not that event's"
            )
            # Event 1, before the forged row, still arrives; then the error.
            assert [m["type"] for m in rig.client.sent] == ["connected", "state", "event", "error"]
            assert rig.client.of("state")[0]["status"] == "RUNNING"  # the store's, not forged
            assert rig.stream.phase is Phase.CLOSED
        finally:
            rig.close()

    asyncio.run(body())
