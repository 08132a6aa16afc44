"""A task's publisher knows, through the real proxy, whether anyone wants its events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from bus.client import Publisher
from bus.messages import Event, new_task_id, topic, utcnow
from bus.proxy import Proxy
from tests.helpers import poll_for

pytestmark = pytest.mark.timeout(60)


class Bus:
    def __init__(self, tmp_path: Path) -> None:
        self.front, self.back = f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/out.sock"
        self.proxy = Proxy(self.front, self.back)
        self.proxy.start()
        self.ctx = zmq.Context()
        self.socks: list[zmq.Socket[bytes]] = []

    def subscriber(self, *prefixes: bytes) -> zmq.Socket[bytes]:
        sub = self.ctx.socket(zmq.SUB)
        sub.connect(self.back)
        for p in prefixes:
            sub.setsockopt(zmq.SUBSCRIBE, p)
        self.socks.append(sub)
        return sub

    def close(self) -> None:
        for s in self.socks:
            s.close(0)
        self.ctx.term()
        self.proxy.stop()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = Bus(tmp_path)
    yield b
    b.close()


def events(task_id: str, first: int, n: int) -> list[Event]:
    return [
        Event(
            event_id=i,
            task_id=task_id,
            timestamp=utcnow(),
            agent_role="Engineer",
            event_type="MESSAGE",
            payload={"i": i},
        )
        for i in range(first, first + n)
    ]


def test_events_go_out_only_while_someone_subscribes(bus: Bus) -> None:
    tid, other = new_task_id(), new_task_id()
    frame = topic(tid, "event")
    pub = Publisher(bus.front, bus.ctx, linger_ms=0, track_interest=True)
    try:
        assert not pub.wanted(frame)
        bus.subscriber(other.encode())  # someone else's task: not a reason to encode ours
        watcher = bus.subscriber(tid.encode())
        poll_for(lambda: pub.wanted(frame), 10, what="the subscription to reach the publisher")
        pub.publish_events(tid, events(tid, 1, 3))
        got = []
        while len(got) < 3:
            assert watcher.poll(5000)
            t, body = watcher.recv_multipart()
            assert t == frame
            got.append(msgspec.msgpack.decode(body)["event_id"])
        assert got == [1, 2, 3]
        watcher.setsockopt(zmq.UNSUBSCRIBE, tid.encode())
        poll_for(lambda: not pub.wanted(frame), 10, what="the unsubscription to arrive")
        # A subscription to everything (a third-party monitor) wants every task's events.
        bus.subscriber(b"")
        poll_for(lambda: pub.wanted(frame), 10, what="a catch-all subscription")
    finally:
        pub.close(0)


def test_a_plain_publisher_always_sends(bus: Bus) -> None:
    pub = Publisher(bus.front, bus.ctx, linger_ms=0)
    try:
        assert pub.wanted(topic(new_task_id(), "event"))
    finally:
        pub.close(0)
