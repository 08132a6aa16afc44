"""Fan-out of bus messages to WebSocket connections, one SUB socket per gateway.

Each message is decoded and JSON-encoded once, then offered to every listener of its task.
Listeners have bounded queues and are never waited on: a full queue marks the listener as
overflowed, and its connection catches up from the event log instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import zmq.asyncio

from bus.client import AsyncSubscriber, DecodeFailure, decode_frames
from bus.messages import (
    BusMessage,
    Event,
    Heartbeat,
    State,
    event_data_json,
    json_encoder,
    state_data,
    ws_frame,
)
from bus.ratelog import RateLimitedLog

log = logging.getLogger("metastream.hub")


@dataclass(frozen=True, slots=True)
class LiveEvent:
    event_id: int
    frame: str


@dataclass(frozen=True, slots=True)
class LiveState:
    state: State
    frame: str


@dataclass(frozen=True, slots=True)
class LiveBeat:
    last_event_id: int


Item = LiveEvent | LiveState | LiveBeat


class Listener:
    """One connection's bounded view of a task's live messages."""

    def __init__(self, task_id: str, maxsize: int) -> None:
        self.task_id = task_id
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    def reset(self) -> None:
        """Forget queued items after an overflow (the log has them)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False


class Hub:
    """One bus subscription per watched task, shared by all its connections."""

    def __init__(self, endpoint: str, ctx: zmq.asyncio.Context, queue_size: int) -> None:
        self._sub = AsyncSubscriber(endpoint, ctx)
        self._queue_size = queue_size
        self._listeners: dict[str, set[Listener]] = {}
        self.dropped_frames = 0
        self._bad_frames = RateLimitedLog(log)
        # Told the new watcher count of a task whenever a connection comes or goes.
        self.on_change: Callable[[str, int], None] = lambda _task_id, _n: None

    def attach(self, task_id: str) -> Listener:
        listener = Listener(task_id, self._queue_size)
        group = self._listeners.setdefault(task_id, set())
        if not group:
            self._sub.subscribe([task_id])
        group.add(listener)
        self.on_change(task_id, len(group))
        return listener

    def detach(self, listener: Listener) -> None:
        group = self._listeners.get(listener.task_id)
        if group is None:
            return
        group.discard(listener)
        if not group:
            del self._listeners[listener.task_id]
            self._sub.unsubscribe(listener.task_id)
        self.on_change(listener.task_id, len(group))

    def watchers(self, task_id: str) -> int:
        return len(self._listeners.get(task_id, ()))

    def watched(self) -> dict[str, int]:
        return {t: len(g) for t, g in self._listeners.items()}

    async def run(self) -> None:
        while True:
            for frames in await self._sub.recv_batch():
                self._dispatch(*decode_frames(frames))
            # A long batch must not starve the connections' writers.
            await asyncio.sleep(0)

    def _dispatch(self, task_id: str, msg: BusMessage | DecodeFailure) -> None:
        group = self._listeners.get(task_id)
        if not group:
            return
        item: Item
        match msg:
            case Event():
                item = LiveEvent(msg.event_id, ws_frame("event", event_data_json(msg)).decode())
            case State():
                data = json_encoder.encode(state_data(msg))
                item = LiveState(msg, ws_frame("state", data).decode())
            case Heartbeat():
                item = LiveBeat(msg.last_event_id)
            case DecodeFailure(error=error):
                self.dropped_frames += 1
                self._bad_frames.warning("dropped a bad bus frame for %s: %s", task_id, error)
                return
            case _:
                return  # leases and future kinds are not for clients
        for listener in group:
            listener.offer(item)

    def close(self) -> None:
        self._sub.close()
