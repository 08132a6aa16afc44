"""The hub over a real proxy: live fan-out, and a task too far behind handed to the log."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from bus.client import Publisher
from bus.messages import Event, State, new_task_id, topic
from bus.proxy import Proxy
from gateway.hub import BURST, Hub, Listener, LiveEvent

pytestmark = pytest.mark.timeout(60)


def event(task_id: str, event_id: int) -> Event:
    return Event(
        event_id=event_id,
        task_id=task_id,
        timestamp="2026-01-01T00:00:00.000Z",
        agent_role="Engineer",
        event_type="MESSAGE",
        payload={"i": event_id},
    )


class Bus:
    """A real proxy on ipc sockets under tmp_path, and the contexts of its two sides."""

    def __init__(self, tmp_path: Path) -> None:
        self.front, self.back = f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/out.sock"
        self.proxy = Proxy(self.front, self.back)
        self.ctx = zmq.asyncio.Context()
        self.pub_ctx = zmq.Context()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = Bus(tmp_path)
    b.proxy.start()
    yield b
    b.proxy.stop()
    b.ctx.term()
    b.pub_ctx.term()


def on_loop(fn: Callable[[Bus], Awaitable[None]]) -> Callable[[Bus], None]:
    """Run an async test body on a fresh event loop."""

    @functools.wraps(fn)
    def test(bus: Bus) -> None:
        asyncio.run(fn(bus))

    return test


async def until(fn, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll ``fn`` on the loop (the hub runs on it) until truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


@contextlib.asynccontextmanager
async def running_hub(bus: Bus, queue_size: int) -> AsyncIterator[tuple[Hub, Publisher]]:
    """A hub reading the bus on this loop, and a publisher to feed it."""
    hub = Hub(bus.back, bus.ctx, queue_size=queue_size)
    runner = asyncio.create_task(hub.run())
    pub = Publisher(bus.front, bus.pub_ctx, linger_ms=0)
    try:
        yield hub, pub
    finally:
        runner.cancel()
        pub.close(0)
        hub.close()


def events(listener: Listener) -> list[LiveEvent]:
    return [i for i in listener.items if isinstance(i, LiveEvent)]


async def joined(pub: Publisher, task_id: str, listener: Listener) -> None:
    """Publish probe states until one reaches the listener (PUB/SUB joins asynchronously)."""

    def probe() -> bool:
        pub.publish(task_id, State(task_id=task_id, status="RUNNING"))
        return bool(listener.items)

    await until(probe, 10, "the subscription to reach the publisher")
    listener.items.clear()


@on_loop
async def test_live_messages_reach_every_listener_once_encoded(bus: Bus) -> None:
    tid, other = new_task_id(), new_task_id()
    async with running_hub(bus, 100) as (hub, pub):
        a, b = hub.attach(tid), hub.attach(tid)
        await joined(pub, tid, a)
        b.items.clear()
        pub.publish_events(tid, [event(tid, i) for i in range(1, 11)])
        pub.publish_events(other, [event(other, 1)])  # nobody watches it
        # (Probe states still in flight may arrive too: look at the events.)
        await until(lambda: len(events(a)) == 10 and len(events(b)) == 10, 10, "10 events each")
        assert [i.event_id for i in events(a)] == list(range(1, 11))
        # One item per message, shared by the listeners: encoded once, not once per client.
        assert all(x is y for x, y in zip(events(a), events(b), strict=True))
        assert events(a)[0].frame.startswith(b'{"type":"event","data":{"event_id":1,')


@on_loop
async def test_a_task_far_behind_is_unsubscribed_until_a_listener_resets(bus: Bus) -> None:
    tid = new_task_id()
    frame = topic(tid, "event")
    watcher = Publisher(bus.front, bus.pub_ctx, linger_ms=0, track_interest=True)
    async with running_hub(bus, 50) as (hub, pub):
        listener = hub.attach(tid)
        await joined(pub, tid, listener)
        assert hub.subscribed(tid)
        await until(lambda: watcher.wanted(frame), 10, "the subscription upstream")
        # More than the queue holds, published while nobody drains it.
        pub.publish_events(tid, [event(tid, i) for i in range(1, 201)])
        await until(lambda: listener.overflowed, 10, "the listener to overflow")
        assert len(listener.items) == 50  # bounded: the rest is the log's job
        assert not hub.subscribed(tid)  # its only connection reads the log now
        # The unsubscription reached the publishers: a task process (an interest-tracking
        # XPUB, as runner.task uses) sees nobody wants the task's events and stops sending.
        await until(lambda: not watcher.wanted(frame), 10, "the unsubscription upstream")
        listener.reset()  # caught up from the log: live again
        assert hub.subscribed(tid) and not listener.items
        await until(lambda: watcher.wanted(frame), 10, "the subscription upstream again")
        await joined(pub, tid, listener)
        pub.publish_events(tid, [event(tid, 201)])
        await until(lambda: events(listener), 10, "the next event")
    watcher.close(0)


@on_loop
async def test_one_live_listener_keeps_the_subscription(bus: Bus) -> None:
    tid = new_task_id()
    async with running_hub(bus, 20) as (hub, pub):
        slow, fast = hub.attach(tid), hub.attach(tid)
        await joined(pub, tid, slow)
        fast.items.clear()
        drained: list[int] = []

        async def drain() -> None:  # the fast connection keeps up
            while len(drained) < 100:
                await fast.wait(1.0)
                while fast.items:
                    item = fast.items.popleft()
                    if isinstance(item, LiveEvent):
                        drained.append(item.event_id)

        reader = asyncio.create_task(drain())
        for i in range(1, 101):
            pub.publish_events(tid, [event(tid, i)])
            await asyncio.sleep(0)
            if i % 10 == 0:
                await asyncio.sleep(0.01)  # a pace the fast reader keeps
        await asyncio.wait_for(reader, 10)
        assert drained == list(range(1, 101))
        assert slow.overflowed and hub.subscribed(tid)
        hub.detach(fast)
        assert not hub.subscribed(tid)  # only the overflowed one is left
        hub.detach(slow)
        assert hub.watched() == {}


@on_loop
async def test_a_burst_of_one_task_is_queued_not_written_message_by_message(bus: Bus) -> None:
    """A run of one task's messages is queued for its idle connections, so each sends it in
    one write (one batch frame); a lone message goes to their direct writers
    (tests/gateway/test_stream.py)."""
    tid = new_task_id()
    async with running_hub(bus, 1000) as (hub, pub):
        listener = hub.attach(tid)
        await joined(pub, tid, listener)
        pub.publish_events(tid, [event(tid, 1)])  # behind every probe state still in flight
        await until(lambda: events(listener), 10, "event 1")
        listener.items.clear()
        taken: list[LiveEvent] = []

        def direct(item: object, writes: object) -> bool:
            assert isinstance(item, LiveEvent)
            taken.append(item)
            return True

        listener.direct = direct  # type: ignore[assignment]
        pub.publish_events(tid, [event(tid, i) for i in range(2, 202)])
        await until(lambda: len(taken) + len(events(listener)) == 200, 10, "the burst")
        # All queued, but for a first receive too small to be a burst (BURST messages).
        assert len(taken) < BURST, f"{len(taken)} of the burst's 200 were written one by one"
        got = [i.event_id for i in taken] + [i.event_id for i in events(listener)]
        assert got == list(range(2, 202))
