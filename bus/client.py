"""Small publisher/subscriber helpers: blocking for task processes, asyncio for the gateway."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import msgspec
import zmq
import zmq.asyncio

from bus import curve
from bus.messages import (
    SYSTEM_TOPIC_PREFIX,
    BusMessage,
    bus_decoder,
    bus_encoder,
    task_id_of,
    topic,
)

PUB_HWM = 100_000
SUB_HWM = 200_000


class Publisher:
    """A blocking PUB socket connected to the proxy's publisher side."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, linger_ms: int = 2000):
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        # Linger so that what was published just before a clean exit still leaves the process.
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        curve.connect_securely(self._sock, endpoint)  # CURVE when the bus leaves the host
        self._topics: dict[tuple[str, str], bytes] = {}

    def publish(self, task_id: str, msg: BusMessage) -> None:
        key = (task_id, str(msg.__struct_config__.tag))
        frame = self._topics.get(key)
        if frame is None:  # a task process publishes on a handful of topics: build each once
            frame = self._topics[key] = topic(task_id, key[1])
        self.send(frame, bus_encoder.encode(msg))

    def publish_system(self, topic_frame: bytes, msg: BusMessage) -> None:
        self.send(topic_frame, bus_encoder.encode(msg))

    def send(self, topic_frame: bytes, body: bytes) -> None:
        # At the high-water mark the message is dropped on the bus only: it is in the event
        # log, and subscribers refill the gap from there.
        with contextlib.suppress(zmq.Again):
            # Two sends rather than send_multipart, and copying: for small messages zero-copy
            # costs more than it saves.
            self._sock.send(topic_frame, zmq.NOBLOCK | zmq.SNDMORE)
            self._sock.send(body, zmq.NOBLOCK)

    def close(self, linger_ms: int | None = None) -> None:
        if linger_ms is not None:
            self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.close()


class DecodeFailure(msgspec.Struct):
    """A frame that could not be decoded (kept so callers can count it)."""

    topic: bytes
    error: str


class AsyncSubscriber:
    """An asyncio SUB socket connected to the proxy's subscriber side."""

    def __init__(self, endpoint: str, ctx: zmq.asyncio.Context | None = None) -> None:
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, SUB_HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        curve.connect_securely(self._sock, endpoint)  # CURVE when the bus leaves the host
        self._shadow: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)

    def subscribe(self, prefixes: Iterable[bytes | str]) -> None:
        for p in prefixes:
            self._sock.setsockopt(zmq.SUBSCRIBE, p.encode() if isinstance(p, str) else p)

    def unsubscribe(self, prefix: bytes | str) -> None:
        self._sock.setsockopt(
            zmq.UNSUBSCRIBE, prefix.encode() if isinstance(prefix, str) else prefix
        )

    async def recv(self) -> tuple[str, BusMessage | DecodeFailure]:
        """Next message as (task_id, decoded message or DecodeFailure)."""
        return decode_frames(await self._sock.recv_multipart())

    async def recv_frames(self) -> list[bytes]:
        """Next raw multipart message."""
        return await self._sock.recv_multipart()

    async def recv_batch(self, limit: int = 1000) -> list[list[bytes]]:
        """Wait for one message, then take what else is already queued (up to ``limit``).

        Awaiting each message costs pyzmq's asyncio machinery ~17 us; draining what is ready
        with non-blocking reads on a plain shadow socket costs ~3 us.
        """
        batch = [await self._sock.recv_multipart()]
        while len(batch) < limit:
            try:
                batch.append(self._shadow.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return batch

    def close(self) -> None:
        self._sock.close(linger=0)


def decode_frames(frames: list[bytes]) -> tuple[str, BusMessage | DecodeFailure]:
    """Decode a ``[topic, body]`` bus frame, never raising on hostile input."""
    if len(frames) != 2:
        head = frames[0] if frames else b""
        return task_id_of(head), DecodeFailure(head, f"expected 2 frames, got {len(frames)}")
    topic_frame, body = frames
    try:
        msg = bus_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return task_id_of(topic_frame), DecodeFailure(topic_frame, str(exc))
    if topic_frame.startswith(SYSTEM_TOPIC_PREFIX):
        return msg.task_id, msg
    tid = task_id_of(topic_frame)
    if msg.task_id != tid:
        return tid, DecodeFailure(topic_frame, "topic and body name different tasks")
    return tid, msg
