"""The bridge between one WebSocket connection and one task's stream.

Subscribe first, then replay from the event log, then forward live messages, dropping what
was already sent and refilling any gap from the log (the ZeroMQ guide's "Clone" pattern). The
log is the source of truth; the bus is only the fast path.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from bus.messages import (
    TERMINAL_STATUSES,
    StartTask,
    State,
    json_encoder,
    state_data,
    state_of,
    ws_frame,
)
from core.metrics import Registry
from core.settings import Settings
from gateway.control import ControlClient, SupervisorUnavailable
from gateway.frames import Format, FrameWriter, MsgpackCache
from gateway.hub import DirectWrites, Hub, Item, Listener, LiveBeat, LiveEvent, LiveState
from gateway.logreader import LogReader
from gateway.metrics import GatewayMetrics
from gateway.rowcache import TaskRowCache
from store import Store
from store.eventlog import EventLogUnreadable

log = logging.getLogger("metastream.stream")
T = TypeVar("T")

CLOSE_NORMAL = 1000
CLOSE_NOT_FOUND = 4404
CLOSE_START_FAILED = 1011
# A task's log that cannot be read: a server-side error, as RFC 6455 has it (the error
# message sent before the close says which).
CLOSE_LOG_UNREADABLE = 1011
CLOSE_TOO_MANY = 4429
LIVE_AGAIN_BELOW = 256  # a log pass finding fewer new events than this: back to live
QUIET_POLL = 1.0  # with no bus traffic for this long, look at the log (a lost final state...)


class Phase(enum.Enum):
    """Where one connection is; :data:`MOVES` says what may follow what."""

    CONNECTING = "connecting"  # accepted; finding the task, starting it if asked
    REPLAYING = "replaying"  # ``connected`` sent; sending the log from the client's position
    LIVE = "live"  # forwarding the hub's live messages, refilling gaps from the log
    BEHIND = "behind"  # its live queue overflowed: served from the log until it catches up
    CLOSING = "closing"  # a close frame is being sent (after the final state or an error)
    CLOSED = "closed"  # the connection is over (closed by us, or the client left)


MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.CONNECTING: frozenset({Phase.REPLAYING, Phase.CLOSING, Phase.CLOSED}),
    Phase.REPLAYING: frozenset({Phase.LIVE, Phase.CLOSING, Phase.CLOSED}),
    Phase.LIVE: frozenset({Phase.BEHIND, Phase.CLOSING, Phase.CLOSED}),
    Phase.BEHIND: frozenset({Phase.LIVE, Phase.CLOSING, Phase.CLOSED}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A move :data:`MOVES` does not allow: a bug in the bridge, never the client's doing."""


class TaskStream:
    """Streams one task to one WebSocket client."""

    def __init__(
        self,
        ws: WebSocket,
        task_id: str,
        last_event_id: int,
        *,
        store: Store,
        log: LogReader,
        hub: Hub,
        control: ControlClient,
        cfg: Settings,
        autostart: bool = True,
        metrics: GatewayMetrics | None = None,
        conversation: bool = False,
        fmt: Format = Format.JSON,
        subprotocol: str | None = None,
        frame_cache: MsgpackCache | None = None,
        rows: TaskRowCache | None = None,
    ) -> None:
        self.ws = ws
        self.task_id = task_id
        self.next_id = last_event_id + 1
        self.store = store
        self.rows = rows or TaskRowCache(store)  # the quiet polls, shared per task
        self.log = log
        self.hub = hub
        self.control = control
        self.cfg = cfg
        self.autostart = autostart
        # ``?follow=conversation``: a final state does not close the stream; the next run's
        # states and events (a follow-up, a resume) follow on the same connection.
        self.conversation = conversation
        self.metrics = metrics or GatewayMetrics(Registry(enabled=False))
        self.phase = Phase.CONNECTING
        self._last_state: dict[str, Any] | None = None
        self._ended = False  # the final state was sent
        self._last_state_version = -1
        self._last_send = time.monotonic()
        self._next_poll = self._last_send + QUIET_POLL  # when to look at the log if all is quiet
        # Frames in the format the client asked for (gateway.frames; the seed's by default).
        self.out = FrameWriter(ws, fmt, frame_cache)
        self._subprotocol = subprotocol

    def _move(self, new: Phase) -> None:
        if new not in MOVES[self.phase]:
            expected = " or ".join(p.value for p in Phase if new in MOVES[p])
            raise InvalidTransition(f"to {new.value}: expected {expected}, got {self.phase.value}")
        self.phase = new

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    async def _send(self, frame: bytes) -> None:
        await self._send_many([frame])

    async def _send_many(self, frames: list[bytes], bodies: list[bytes] | None = None) -> None:
        """Send seed messages given as UTF-8 JSON (``bodies``: the same as bus bodies)."""
        await self.out.send(frames, bodies)
        self._last_send = time.monotonic()
        self.metrics.ws_sent += len(frames)

    async def _send_json(self, msg_type: str, data: dict[str, Any]) -> None:
        await self._send(ws_frame(msg_type, json_encoder.encode(data)))

    # --- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection to its end; the phase is CLOSED after, however it ended."""
        try:
            await self._serve()
        finally:
            self._move(Phase.CLOSED)

    async def _serve(self) -> None:
        await self.ws.accept(subprotocol=self._subprotocol)
        self.metrics.ws_opened += 1
        row = await self._db(self.store.get_task, self.task_id)
        if row is None:
            await self._send_json("error", {"message": "Task not found"})
            await self._close(CLOSE_NOT_FOUND)
            return
        if self.hub.watchers(self.task_id) >= self.cfg.ws_max_per_task:
            limit = self.cfg.ws_max_per_task
            await self._send_json(
                "error", {"message": f"Too many connections to this task (limit {limit})"}
            )
            await self._close(CLOSE_TOO_MANY)
            return
        listener = self.hub.attach(self.task_id)  # subscribe before reading the log
        try:
            started = False
            if self.autostart and row.status in ("PENDING", "FAILED"):
                try:
                    reply = await self.control.request(
                        StartTask(self.task_id), self.cfg.control_timeout
                    )
                except SupervisorUnavailable as exc:
                    await self._fail_start(str(exc))
                    return
                if not reply.ok:
                    await self._fail_start(reply.error or "unknown error")
                    return
                started = True
            message = (
                "Task started and connected to event stream"
                if started
                else "Connected to event stream"
            )
            await self._send_json("connected", {"task_id": self.task_id, "message": message})
            self._move(Phase.REPLAYING)
            row = await self._db(self.store.get_task, self.task_id)
            assert row is not None
            if row.status not in TERMINAL_STATUSES:
                # A final state is only ever the last message: clients stop reading at it
                # (an ended task's replay is events first, then its final state).
                await self._offer_state(state_of(row))
            await self._catch_up(None)
            ended = row.status in TERMINAL_STATUSES and self.next_id > row.last_event_id
            if ended and await self._finish(state_of(row)):
                return
            self._move(Phase.LIVE)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_client, tg.cancel_scope)
                tg.start_soon(self._forward, listener, tg.cancel_scope)
        except* WebSocketDisconnect:
            self.metrics.ws_closed["client_left"] += 1  # the task goes on (policy may not)
        except* EventLogUnreadable as group:
            await self._fail_log(group.exceptions[0])
        finally:
            self.hub.detach(listener)
            if self._ended and not self.hub.watchers(self.task_id):
                # The task is over and nobody follows it: its cached log blocks would only
                # pile up, one ended task after another (a soak grew ~70 KB per task).
                self.log.forget(self.task_id)

    async def _fail_start(self, why: str) -> None:
        await self._send_json("error", {"message": f"Task start failed: {why}"})
        await self._close(CLOSE_START_FAILED)

    async def _fail_log(self, exc: BaseException) -> None:
        """The task's log cannot be read (the task damaged or forged it): say so and close
        (1011), rather than the connection dropping with nothing said."""
        log.warning("closing a stream of task %s: %s", self.task_id, exc)
        self.metrics.ws_closed["log_unreadable"] += 1
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left first
            await self._send_json("error", {"message": str(exc)})
            self._move(Phase.CLOSING)
            await self.out.flush()
            await self.ws.close(CLOSE_LOG_UNREADABLE)

    async def _close(self, code: int) -> None:
        self._move(Phase.CLOSING)
        self.metrics.closed(code)
        await self.out.flush()  # what a batched format still holds goes before the close
        with contextlib.suppress(RuntimeError):  # the client closed first
            await self.ws.close(code)

    async def _read_client(self, scope: anyio.CancelScope) -> None:
        """Drain what the client sends; its disconnect ends the connection."""
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
        finally:
            scope.cancel()

    async def _forward(self, listener: Listener, scope: anyio.CancelScope) -> None:
        try:
            self._next_poll = time.monotonic() + QUIET_POLL
            items = listener.items
            while True:
                if listener.overflowed:
                    # Too far behind for the live queue: the log has everything, states too.
                    # Read it while still overflowed (the hub may unsubscribe meanwhile), as
                    # long as each pass still finds many new events (reading the log is the
                    # cheaper way to follow a fast task), then take live messages again and
                    # read what was logged before they resumed.
                    self._move(Phase.BEHIND)
                    self.metrics.ws_log_catchups += 1
                    while await self._catch_up(None) >= LIVE_AGAIN_BELOW:
                        pass
                    listener.reset()
                    self._move(Phase.LIVE)
                    await self._catch_up(None)
                    if await self._on_quiet():
                        return
                    continue
                now = time.monotonic()
                if now - self._last_send >= self.cfg.ws_heartbeat_interval:
                    await self._heartbeat()
                if not items:
                    wait = (
                        min(self._next_poll, self._last_send + self.cfg.ws_heartbeat_interval) - now
                    )
                    # Parked with nothing queued or held: the hub may write live events for
                    # us meanwhile (_direct), in order, without waking this task.
                    if self.out.writer_for is not None and self.out.idle:
                        listener.direct = self._direct
                    try:
                        woke = await listener.wait(max(wait, 0.001))
                    finally:
                        listener.direct = None
                    if not woke:
                        if time.monotonic() >= self._next_poll:
                            self._next_poll = time.monotonic() + QUIET_POLL
                            if await self._on_quiet():
                                return
                        continue
                self._next_poll = time.monotonic() + QUIET_POLL
                # Drain what is queued; stop at an overflow (reset drops the rest). What it
                # sends leaves together: in one batch frame, for clients that asked for those.
                self.out.hold()
                while items and not listener.overflowed:
                    if await self._handle(items.popleft()):
                        return
                await self.out.flush()
        finally:
            scope.cancel()

    def _direct(self, item: Item, writes: DirectWrites) -> bool:
        """Take a live item from the hub, as :meth:`_handle` would; else False (queue it).

        Events next in line and states that are not final are taken: their frame and the
        transport go to ``writes``, which the hub writes once every connection has been
        looked at (the checks and the system calls each in a loop of their own: measured,
        the dispatch of one event to 1,000 connections took ~15% less CPU). Beats with
        nothing to refill are done. Anything else is left to the task. Only while
        :meth:`_forward` waits with nothing queued and nothing held, so nothing of this
        connection can be in flight: the item goes out as the same frame every other
        connection of this format gets.
        """
        data = None
        if isinstance(item, LiveEvent):
            if item.event_id != self.next_id:
                return False  # a gap or a duplicate: the task decides
            body = item.body
        elif isinstance(item, LiveState):
            st = item.state
            if st.status in TERMINAL_STATUSES:
                return False  # the end of the stream: the task checks the store
            if st.version < self._last_state_version:
                return True  # older than what the client has (as _offer_state drops it)
            data = item.data if item.data is not None else state_data(st)
            if data == self._last_state:
                return True
            body = b""
        else:
            return item.last_event_id < self.next_id  # a beat: nothing to refill, or the task
        out = self.out
        key = out.key
        wire = item.wire.get(key, b"")
        if wire == b"":
            if data is not None and out.fmt.binary:  # the seed's state fields, not the bus's
                body = out.convert([item.frame])[0]
            wire = item.wire[key] = out.wire(item.frame, body)
        writer_for = out.writer_for
        if wire is None or writer_for is None:
            return False
        transport = writer_for(wire)
        if transport is None:
            return False
        writes.transports.append(transport)
        writes.wires.append(wire)
        if isinstance(item, LiveState):
            self._last_state, self._last_state_version = data, item.state.version
        else:
            self.next_id += 1
        out.frames_sent += 1
        # Traffic, as if the task had handled it: no heartbeat due, no quiet-poll of the store.
        now = self._last_send = time.monotonic()
        self._next_poll = now + QUIET_POLL
        return True

    async def _handle(self, item: Item) -> bool:
        """Send one live item; True once the stream has ended."""
        match item:
            case LiveEvent(event_id=event_id, frame=frame, body=body):
                if event_id < self.next_id:
                    return False  # already sent (replayed from the log)
                if event_id > self.next_id:
                    self.metrics.ws_gap_refills += event_id - self.next_id
                    await self._catch_up(event_id - 1)  # a gap: refill from the log
                if event_id == self.next_id:
                    await self._send_many([frame], [body] if body else None)
                    self.next_id += 1
            case LiveState(state=state):
                if state.status in TERMINAL_STATUSES:
                    # Ending a stream is final: believe the store, not the bus (one read
                    # per connection; a forged frame cannot end a stream).
                    row = await self._db(self.store.get_task, self.task_id)
                    if row is None or row.status not in TERMINAL_STATUSES:
                        return False
                    await self._catch_up(None)
                    return await self._finish(state_of(row))
                await self._offer_state(state)
            case LiveBeat(last_event_id=last):
                if last >= self.next_id:
                    await self._catch_up(last)
        return False

    async def _heartbeat(self) -> None:
        """Tell an idle client the link is alive and which event it should have last."""
        await self._send_json(
            "heartbeat",
            {
                "task_id": self.task_id,
                "last_event_id": self.next_id - 1,
                "status": self._last_state["status"] if self._last_state else None,
            },
        )

    async def _on_quiet(self) -> bool:
        """Nothing arrived for a while: check the log; True once the task has ended."""
        row = await self.rows.get(self.task_id)  # one read for all the task's connections
        if row is None:
            return True
        if row.last_event_id >= self.next_id:
            await self._catch_up(row.last_event_id)
        if row.status in TERMINAL_STATUSES:
            await self._catch_up(None)
            return await self._finish(state_of(row))
        await self._offer_state(state_of(row))
        return False

    async def _catch_up(self, upto: int | None) -> int:
        """Send logged events from ``next_id`` on (at least up to ``upto``); how many.

        Pages come from the gateway's shared :class:`LogReader`, which reads the next one
        while this one is sent: JSON frames, or for a binary format the logged bus bodies.
        """
        sent = 0
        binary = self.out.fmt.binary
        while upto is None or self.next_id <= upto:
            # With ``upto`` the events up to it are known to be logged (see LogReader.read).
            rows = await self.log.read(self.task_id, self.next_id - 1, upto is not None, binary)
            if not rows:
                break
            units = [unit for _, unit in rows]
            # A binary connection's rows are the events' bus bodies, sent as they are.
            await self._send_many(units, units if binary else None)
            self.next_id = rows[-1][0] + 1
            sent += len(rows)
        self.metrics.ws_log_events += sent
        return sent

    async def _offer_state(self, state: State) -> None:
        if state.version < self._last_state_version:
            return  # older than what the client already has
        data = state_data(state)
        if data == self._last_state:
            return
        self._last_state = data
        self._last_state_version = state.version
        await self._send_json("state", data)

    async def _finish(self, final: State) -> bool:
        """Send the final state after the events it covers; True if the stream is over."""
        # The final state carries the task's last event id: everything before it goes first.
        if final.last_event_id >= self.next_id:
            await self._catch_up(final.last_event_id)
        if self.conversation:
            await self._offer_state(final)  # once: an unchanged state is not sent again
            return False
        self._last_state_version = -1
        await self._offer_state(final)
        self._ended = True
        await self._close(CLOSE_NORMAL)
        return True
