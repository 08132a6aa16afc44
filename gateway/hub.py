"""Fan-out of bus messages to WebSocket connections, one SUB socket per gateway.

Each message is decoded and JSON-encoded once, then offered to every listener of its task.
Listeners have bounded queues and are never waited on: a full queue marks the listener as
overflowed, and its connection catches up from the event log instead (until then the hub
does not even encode for it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq.asyncio

from bus.client import AsyncSubscriber, DecodeFailure, decode_frames
from bus.messages import (
    Event,
    Heartbeat,
    State,
    event_data_json,
    json_encoder,
    state_data,
    task_id_of,
    ws_frame,
)
from bus.ratelog import RateLimitedLog

log = logging.getLogger("metastream.hub")
BURST = 8  # messages in one receive from the bus: from here on, runs of a task are queued


class Writable(Protocol):
    """What the hub writes a taken frame to: a connection's transport."""

    def write(self, data: bytes) -> object: ...


class DirectWrites:
    """The frames one dispatch took for direct writing, written once all are checked.

    Two parallel lists rather than a tuple per connection: nothing the garbage collector
    tracks is allocated per delivery (1,000 connections made thousands of tuples and bound
    methods per event, and the young collections they triggered promoted the connections'
    short-lived timers into the old generation, whose full collections paused the gateway
    for hundreds of milliseconds).
    """

    __slots__ = ("transports", "wires")

    def __init__(self) -> None:
        self.transports: list[Writable] = []
        self.wires: list[bytes] = []

    def write_all(self) -> int:
        for transport, wire in zip(self.transports, self.wires, strict=True):
            transport.write(wire)
        return len(self.wires)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    event_id: int
    frame: bytes  # the WebSocket message, UTF-8
    body: bytes = b""  # the bus body as received (MessagePack), for binary-format clients
    # Whole WebSocket frames of this event per format, built by the first connection that
    # writes it directly (gateway/stream.py ``_direct``) for all the others.
    wire: dict[object, bytes | None] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class LiveState:
    state: State
    frame: bytes
    wire: dict[object, bytes | None] = field(default_factory=dict, compare=False)  # as above
    # The seed's ``data`` object of the state, built once for every connection.
    data: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class LiveBeat:
    last_event_id: int


Item = LiveEvent | LiveState | LiveBeat


class Listener:
    """One connection's bounded view of a task's live messages.

    A deque and a bare future rather than an ``asyncio.Queue``: the hub appends whole batches
    and the writer drains them, and waking the writer costs one future per wait instead of
    queue bookkeeping per item (and ``wait_for``'s task per get).
    """

    def __init__(
        self, task_id: str, maxsize: int, on_live_change: Callable[[str], None] = lambda _t: None
    ) -> None:
        self.task_id = task_id
        self.items: collections.deque[Item] = collections.deque()
        self.maxsize = maxsize
        self.overflowed = False
        self._waiter: asyncio.Future[None] | None = None
        # Set by the connection while it waits with nothing queued: takes an item and writes
        # it at once if it can (True), sparing a wake-up of the connection's task per message.
        self.direct: Callable[[Item, DirectWrites], bool] | None = None
        # Told when this listener starts or stops taking live messages.
        self._on_live_change = on_live_change

    def offer(self, item: Item) -> None:
        if self.overflowed:
            return  # dropped: the connection catches up from the log
        if len(self.items) >= self.maxsize:
            self.overflowed = True
            self._on_live_change(self.task_id)
        else:
            self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Wait until there is something to do; False if ``timeout`` passed first."""
        if self.items or self.overflowed:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self.items or self.overflowed)

    def reset(self) -> None:
        """Forget queued items after an overflow (the log has them) and take live ones again."""
        self.items.clear()
        if self.overflowed:
            self.overflowed = False
            self._on_live_change(self.task_id)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Hub:
    """One bus subscription per watched task, shared by all its connections.

    While every connection of a task has overflowed (each is catching up from the log), the
    task is unsubscribed: the proxy stops forwarding what nobody would take, and a gateway
    that is behind spends nothing on it until a connection is live again. Resubscribing
    leaves a gap that the connection refills from the log, as after any loss.
    """

    def __init__(self, endpoint: str, ctx: zmq.asyncio.Context, queue_size: int) -> None:
        self._sub = AsyncSubscriber(endpoint, ctx)
        self._queue_size = queue_size
        self._listeners: dict[str, set[Listener]] = {}
        self._subscribed: set[str] = set()
        self.dropped_frames = 0
        self.on_bad_frame: Callable[[], None] = lambda: None
        # Told how many messages each dispatch wrote straight to connections (a metric).
        self.on_direct: Callable[[int], None] = lambda _n: None
        self._system: dict[bytes, Callable[[], None]] = {}  # system topic -> told when heard
        self._bad_frames = RateLimitedLog(log)
        # Told the new watcher count of a task whenever a connection comes or goes.
        self.on_change: Callable[[str, int], None] = lambda _task_id, _n: None

    def attach(self, task_id: str) -> Listener:
        listener = Listener(task_id, self._queue_size, self._sync)
        group = self._listeners.setdefault(task_id, set())
        group.add(listener)
        self._sync(task_id)
        self.on_change(task_id, len(group))
        return listener

    def detach(self, listener: Listener) -> None:
        group = self._listeners.get(listener.task_id)
        if group is None:
            return
        group.discard(listener)
        if not group:
            del self._listeners[listener.task_id]
        self._sync(listener.task_id)
        self.on_change(listener.task_id, len(group))

    def _sync(self, task_id: str) -> None:
        """Subscribed to a task exactly while one of its connections takes live messages."""
        group = self._listeners.get(task_id, ())
        wanted = any(not listener.overflowed for listener in group)
        if wanted and task_id not in self._subscribed:
            self._sub.subscribe([task_id])
            self._subscribed.add(task_id)
        elif not wanted and task_id in self._subscribed:
            self._sub.unsubscribe(task_id)
            self._subscribed.discard(task_id)

    def on_system(self, topic_frame: bytes, heard: Callable[[], None]) -> None:
        """Subscribe to one system topic (a beacon); ``heard`` is called per message."""
        self._system[topic_frame] = heard
        self._sub.subscribe([topic_frame])

    def subscribed(self, task_id: str) -> bool:
        return task_id in self._subscribed

    def watchers(self, task_id: str) -> int:
        return len(self._listeners.get(task_id, ()))

    def watched(self) -> dict[str, int]:
        return {t: len(g) for t, g in self._listeners.items()}

    async def run(self) -> None:
        # A batch may hold more than a listener's queue: a task that far behind overflows
        # and its connections switch to the log instead of draining a stale backlog.
        limit = max(1000, 2 * self._queue_size)
        while True:
            batch = await self._sub.recv_batch(limit)
            # In a burst, a message followed by more of the same task's is queued, not
            # written straight through: its connections then send the run in one write (one
            # batch frame, for the batched formats). Straight writes are for a trickle,
            # where they spare each connection a wake-up per message (an event and the
            # state after it arrive together: still a trickle); in a burst they cost a
            # system call per message per connection and undid the batching.
            last = len(batch) - 1 if len(batch) >= BURST else 0
            for i, frames in enumerate(batch):
                more = i < last and task_id_of(batch[i + 1][0]) == task_id_of(frames[0])
                self._dispatch(frames, direct_ok=not more)
            if len(batch) >= limit:
                # More is waiting: let the connections' writers run before the next batch.
                # (Otherwise the socket is drained and the next receive yields anyway.)
                await asyncio.sleep(0)

    def _dispatch(self, frames: list[bytes], direct_ok: bool = True) -> None:
        group = self._listeners.get(task_id_of(frames[0]))
        if not group:
            heard = self._system.get(frames[0])  # a system topic (off the event path)
            if heard is not None:
                heard()
            return  # or a task whose connections all left
        # Overflowed connections read the log instead: with none live, skip the decoding.
        live = [listener for listener in group if not listener.overflowed]
        if not live:
            return
        task_id, msg = decode_frames(frames)
        if isinstance(msg, DecodeFailure):
            self.dropped_frames += 1
            self.on_bad_frame()
            self._bad_frames.warning("dropped a bad bus frame for %s: %s", task_id, msg.error)
            return
        item: Item
        match msg:
            case Event():
                item = LiveEvent(msg.event_id, ws_frame("event", event_data_json(msg)), frames[1])
            case State():
                fields = state_data(msg)
                item = LiveState(msg, ws_frame("state", json_encoder.encode(fields)), data=fields)
            case Heartbeat():
                item = LiveBeat(msg.last_event_id)
            case _:
                return  # leases and future kinds are not for clients
        # Every connection is looked at first, then the taken frames are written: nothing
        # runs in between (no await), so what was checked still holds when written.
        writes = DirectWrites()
        for listener in live:
            direct = listener.direct if direct_ok else None
            if direct is None or listener.items or not direct(item, writes):
                listener.offer(item)
        if writes.wires:
            self.on_direct(writes.write_all())

    def close(self) -> None:
        self._sub.close()
