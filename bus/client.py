"""Small publisher/subscriber helpers: blocking for task processes, asyncio for the gateway."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import zmq
import zmq.asyncio

from bus import auth, curve
from bus.messages import (
    SYSTEM_TOPIC_PREFIX,
    BusMessage,
    Event,
    bus_decoder,
    bus_encoder,
    task_id_of,
    topic,
)

# Plain ints: OR-ing pyzmq's enum flags costs more than the send itself on the hot path.
_SEND = int(zmq.NOBLOCK)
_SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RECV = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)

PUB_HWM = 100_000
SUB_HWM = 200_000


class Publisher:
    """A blocking PUB socket connected to the proxy's publisher side.

    With ``track_interest`` it is an XPUB instead, which is told every subscription the proxy
    forwards: :meth:`publish_events` then skips encoding and sending a task's events while
    nobody subscribes to them (a gateway serving a lagging client from the log unsubscribes).
    Dropping them here is what the socket would do anyway, only cheaper.
    """

    def __init__(
        self,
        endpoint: str,
        ctx: zmq.Context | None = None,
        linger_ms: int = 2000,
        *,
        track_interest: bool = False,
        keys: auth.BusKeys | None = None,
    ):
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB if track_interest else zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        # Linger so that what was published just before a clean exit still leaves the process.
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        # A stack's proxy believes a frame only from the key of the task its topic names (or a
        # trusted component's): trusted callers pass theirs, a task has its own in its env.
        keys = keys or auth.keys_from_env()
        if keys is not None:
            self._sock.curve_secretkey = keys.secret
            self._sock.curve_publickey = keys.public
            self._sock.curve_serverkey = keys.server
            self._sock.connect(endpoint)
        else:
            curve.connect_securely(self._sock, endpoint)  # CURVE when the bus leaves the host
        self._topics: dict[tuple[str, str], bytes] = {}
        self._interest: set[bytes] | None = set() if track_interest else None
        self._wanted: dict[bytes, bool] = {}  # per topic, while the subscriptions stay the same

    def wanted(self, topic_frame: bytes) -> bool:
        """Whether any subscription matches this topic (always True for a plain PUB)."""
        if self._interest is None:
            return True
        self._read_subscriptions()
        found = self._wanted.get(topic_frame)
        if found is None:
            found = any(topic_frame.startswith(p) for p in self._interest)
            self._wanted[topic_frame] = found
        return found

    def _read_subscriptions(self) -> None:
        # XPUB (not verbose) reports a topic's first subscription and its last unsubscription:
        # a set of the prefixes someone wants.
        if self._interest is None:
            return
        changed = False
        while True:
            try:
                msg = self._sock.recv(_RECV)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                self._interest.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._interest.discard(msg[1:])
            changed = True
        if changed:
            self._wanted.clear()

    def _topic(self, task_id: str, kind: str) -> bytes:
        frame = self._topics.get((task_id, kind))
        if frame is None:  # a task process publishes on a handful of topics: build each once
            frame = self._topics[(task_id, kind)] = topic(task_id, kind)
        return frame

    def publish(self, task_id: str, msg: BusMessage) -> None:
        self.send(self._topic(task_id, str(msg.__struct_config__.tag)), bus_encoder.encode(msg))

    def publish_events(self, task_id: str, events: Sequence[Event]) -> int:
        """Publish a batch of one task's events (the writer's hot loop, kept lean); how many."""
        frame = self._topic(task_id, "event")
        if not self.wanted(frame):
            return 0
        send, encode = self._sock.send, bus_encoder.encode
        for ev in events:
            try:
                send(frame, _SEND_MORE)
                send(encode(ev), _SEND)
            except zmq.Again:
                pass  # dropped on the bus only (see send)
        return len(events)

    def publish_bodies(self, task_id: str, bodies: Sequence[bytes]) -> int:
        """As :meth:`publish_events`, with the events already encoded (the outbox logs them)."""
        frame = self._topic(task_id, "event")
        if not self.wanted(frame):
            return 0
        send = self._sock.send
        for body in bodies:
            try:
                send(frame, _SEND_MORE)
                send(body, _SEND)
            except zmq.Again:
                pass  # dropped on the bus only (see send)
        return len(bodies)

    def publish_system(self, topic_frame: bytes, msg: BusMessage) -> None:
        self.send(topic_frame, bus_encoder.encode(msg))

    def send(self, topic_frame: bytes, body: bytes) -> None:
        # At the high-water mark the message is dropped on the bus only: it is in the event
        # log, and subscribers refill the gap from there.
        self._read_subscriptions()  # (so they never pile up in the socket)
        try:
            # Two sends rather than send_multipart, and copying: for small messages zero-copy
            # costs more than it saves.
            self._sock.send(topic_frame, _SEND_MORE)
            self._sock.send(body, _SEND)
        except zmq.Again:
            pass

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
        # recv + RCVMORE by hand: recv_multipart's generic path costs twice as much. The
        # parts of a message arrive together, so only a first part can raise Again.
        recv, more = self._shadow.recv, self._shadow.get
        try:
            while len(batch) < limit:
                frames = [recv(_RECV)]
                while more(_RCVMORE):
                    frames.append(recv(_RECV))
                batch.append(frames)
        except zmq.Again:
            pass
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
