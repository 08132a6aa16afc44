"""Opt-in WebSocket frame formats: negotiation, batching, and MessagePack passthrough.

The seed's format (one JSON text frame per message) is the default and stays exactly as it
was. A client may ask for one of three others, preferably by WebSocket subprotocol (the
server names the one it chose in its handshake answer, so the client knows for certain which
format follows; a server that does not know the subprotocol names none, and the client gets
the default), or by ``?format=`` for clients that cannot set ``Sec-WebSocket-Protocol``:

========================  =================  ===============================================
subprotocol               ``?format=``       frames
========================  =================  ===============================================
(none, or unknown ones)   ``json``           text, one seed message ``{"type","data"}`` each
metastream.batch.v1       ``batch``          text, a JSON array of seed messages, in order
metastream.msgpack.v1     ``msgpack``        binary, one MessagePack map each (see below)
metastream.msgpack.batch.v1  ``msgpack-batch``  binary, a MessagePack array of those maps
========================  =================  ===============================================

A MessagePack message is the bus's own body schema: a map of ``kind`` (the seed's ``type``)
and the seed's ``data`` fields. Events are the bus bodies as the task encoded them, forwarded
without re-encoding: live ones as they arrived, logged ones as the task logged them beside
the JSON (the log reader's binary blocks); only events logged before bodies were stored are
converted from their seed JSON, a page at a time (:func:`events_to_msgpack`). Everything else
(states, ``connected``...) is converted from its seed JSON through a small cache.

Batches form from what is already waiting (the hub's receive batch, a page of the event
log): no timer holds a message back for one that has not arrived, so at low rates every
frame holds one message, sent as soon as it would have been in the seed format.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import accumulate
from operator import add
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.wsprotocol import SEND_TEXTS, frame_header

BATCH_BYTES = 64 * 1024  # a batch frame closes before it would pass this (one message: any)
BATCH_MESSAGES = 1024  # ... or at this many messages


class Format(enum.Enum):
    JSON = "json"
    BATCH = "batch"
    MSGPACK = "msgpack"
    MSGPACK_BATCH = "msgpack-batch"

    @property
    def batched(self) -> bool:
        return self in (Format.BATCH, Format.MSGPACK_BATCH)

    @property
    def binary(self) -> bool:
        return self in (Format.MSGPACK, Format.MSGPACK_BATCH)


SUBPROTOCOLS = {
    "metastream.batch.v1": Format.BATCH,
    "metastream.msgpack.v1": Format.MSGPACK,
    "metastream.msgpack.batch.v1": Format.MSGPACK_BATCH,
}
SUBPROTOCOL_OF = {fmt: name for name, fmt in SUBPROTOCOLS.items()}
FORMAT_NAMES = tuple(f.value for f in Format)


class BadFormat(ValueError):
    """A ``?format=`` the gateway does not know."""


def negotiate(offered: Sequence[str], query: str | None) -> tuple[Format, str | None]:
    """The format to use and the subprotocol to name in the handshake (None: none).

    The first offered subprotocol the gateway knows wins (RFC 6455: the client lists them
    in its order of preference); unknown ones are ignored. Without one, ``query`` decides.
    """
    for name in offered:
        fmt = SUBPROTOCOLS.get(name)
        if fmt is not None:
            return fmt, name
    if query is None:
        return Format.JSON, None
    try:
        return Format(query), None
    except ValueError:
        raise BadFormat(
            f"Unknown format {query[:40]!r} (one of: {', '.join(FORMAT_NAMES)})"
        ) from None


_json_decoder = msgspec.json.Decoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def seed_to_msgpack(frame: bytes) -> bytes:
    """A seed message (``{"type","data"}`` as JSON) as a MessagePack bus-schema map."""
    msg = _json_decoder.decode(frame)
    return _msgpack_encoder.encode({"kind": msg["type"], **msg["data"]})


class _LoggedEvent(
    msgspec.Struct, tag="event", tag_field="kind", kw_only=True, forbid_unknown_fields=True
):
    """A logged event's ``data``, decoded strictly: it encodes exactly as the bus's Event.

    The bus's :class:`bus.messages.Event` fields in its order, every one required and no
    other allowed, so a row that decodes here has exactly those keys, and its MessagePack is
    the per-row conversion's, byte for byte (``tests/gateway/test_frames.py``). A row that
    does not (a field added or missing, a wrong type) fails the page's strict decode, and the
    page is converted row by row instead.
    """

    event_id: int
    task_id: str
    timestamp: str
    agent_role: str
    event_type: str
    payload: dict[str, Any]


_events_decoder = msgspec.json.Decoder(list[_LoggedEvent])
EVENT_FRAME_PREFIX = b'{"type":"event","data":'
_DATA_AT = len(EVENT_FRAME_PREFIX)


def events_to_msgpack(frames: Sequence[bytes]) -> list[bytes]:
    """Seed ``event`` messages (as the log reader frames them) as MessagePack, a page at once.

    One JSON decode of the whole page into typed structs (in C, no per-row dicts), then one
    encode per message: 1.5-2x faster than :func:`seed_to_msgpack` row by row, same bytes.
    """
    if not frames:
        return []
    page = b"[" + b",".join([f[_DATA_AT:-1] for f in frames]) + b"]"
    try:
        events = _events_decoder.decode(page)
    except msgspec.DecodeError:  # ValidationError too: the strict decode refused a row
        return [seed_to_msgpack(f) for f in frames]
    return list(map(_msgpack_encoder.encode, events))


class MsgpackCache:
    """Seed JSON frames converted to MessagePack once per gateway, not once per connection.

    Connections catching up read the same log rows (the same ``bytes`` objects, whose hash
    CPython computes once), so the second reader of a row finds it here. Oldest out first,
    bounded in bytes. An OrderedDict, because evicting a plain dict's first key again and again
    is quadratic (``next(iter(d))`` walks the dead slots left by earlier pops): converting a
    100,000-event replay cost 23 us per row that way, 4 us now.
    """

    def __init__(self, budget_bytes: int = 32 << 20) -> None:
        self.budget = budget_bytes
        self._map: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self.conversions = 0

    def convert(self, frames: Sequence[bytes]) -> list[bytes]:
        found = self._map
        out = []
        for frame in frames:
            body = found.get(frame)
            if body is None:
                body = found[frame] = seed_to_msgpack(frame)
                self.conversions += 1
                self._size += len(frame) + len(body) + 100
                while self._size > self.budget and found:
                    old, old_body = found.popitem(last=False)
                    self._size -= len(old) + len(old_body) + 100
            out.append(body)
        return out


def msgpack_array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


# A batch is copied once: the brackets (the array header) join the first and last units, not
# the whole batch (``b"[" + b",".join(units) + b"]"`` copied a 64 KiB frame three times).
def _json_batch(units: list[bytes]) -> bytes:
    if len(units) == 1:
        return b"[" + units[0] + b"]"
    parts = units[:]  # (a new list of references: the caller's units stay as they are)
    parts[0] = b"[" + parts[0]
    parts[-1] += b"]"
    return b",".join(parts)


def _msgpack_batch(units: list[bytes]) -> bytes:
    return b"".join([msgpack_array_header(len(units)), *units])


class FrameWriter:
    """Writes one connection's messages, given as seed JSON, in its negotiated format.

    Between :meth:`hold` and :meth:`flush` a batched format collects messages (writing full
    frames as they fill); other formats write at once, exactly as without a writer.
    """

    def __init__(self, ws: WebSocket, fmt: Format, cache: MsgpackCache | None = None) -> None:
        self.ws = ws
        self.fmt = fmt
        self._convert = self.convert = (cache or MsgpackCache(1 << 20)).convert
        ext = (ws.scope.get("extensions") or {}).get(SEND_TEXTS) or {}
        # Many frames per call, framed by the server itself (see gateway.wsprotocol).
        self._send_texts = ext.get("send_texts")
        self._send_binaries = ext.get("send_binaries")
        # The transport, if one framed message may be written to it now (see
        # wsprotocol.writer_for): the hub's direct fan-out.
        self.writer_for: Callable[[bytes], Any] | None = ext.get("writer_for")
        self.key = fmt.value  # the format as a dict key: an Enum's hash is a Python call
        self._held = False
        self._units: list[bytes] = []  # messages in the format's unit, not yet framed
        self._size = 0
        self.frames_sent = 0

    async def send(self, frames: Sequence[bytes], bodies: Sequence[bytes] | None = None) -> None:
        """Send seed messages; ``bodies``, if given, are the same messages as bus bodies."""
        if self.fmt is Format.JSON:
            await self._write(list(frames))
            return
        if self.fmt.binary:
            units = bodies if bodies is not None else self._convert(frames)
        else:
            units = frames
        if not self.fmt.batched:
            await self._write(list(units))
            return
        self._units += units
        self._size += sum(map(len, units)) + len(units)  # in C: a log page is 2,000 rows
        if not self._held or self._size >= BATCH_BYTES or len(self._units) >= BATCH_MESSAGES:
            await self._write_batches(final=not self._held)

    @property
    def idle(self) -> bool:
        """Nothing held back: a message written now would be in order."""
        return not self._held and not self._units

    def wire(self, frame: bytes, body: bytes) -> bytes | None:
        """One live event as this format's whole WebSocket frame, header included.

        The same bytes :meth:`send` would write for it alone (a batch of one, for the batched
        formats); None if a binary format has no bus body to forward.
        """
        match self.fmt:
            case Format.JSON:
                payload, first = frame, 0x81
            case Format.BATCH:
                payload, first = b"[" + frame + b"]", 0x81
            case Format.MSGPACK:
                payload, first = body, 0x82
            case Format.MSGPACK_BATCH:
                payload, first = msgpack_array_header(1) + body, 0x82
        if not payload:
            return None
        return frame_header(first, len(payload)) + payload

    def hold(self) -> None:
        """Collect what is sent into batch frames until :meth:`flush`."""
        self._held = True

    async def flush(self) -> None:
        self._held = False
        if self._units:
            await self._write_batches(final=True)

    async def _write_batches(self, final: bool) -> None:
        """Frame the collected messages; keep a last partial batch unless ``final``."""
        join = _msgpack_batch if self.fmt.binary else _json_batch
        units = self._units
        n = len(units)
        # ends[k]: the bytes of units[:k], one separator each; batch cuts found by bisection,
        # so a page costs a few C calls, not Python work per message.
        ends = list(map(add, accumulate(map(len, units), initial=0), range(n + 1)))
        out: list[bytes] = []
        s = 0
        while s < n:
            j = bisect_right(ends, ends[s] + BATCH_BYTES + 1, s + 1) - 1  # the units that fit
            j = min(max(j, s + 1), s + BATCH_MESSAGES)  # one at least; BATCH_MESSAGES at most
            if j == n and not final and ends[n] - ends[s] < BATCH_BYTES and n - s < BATCH_MESSAGES:
                break  # a partial batch: more may join it before the flush
            out.append(join(units[s:j]))  # (a slice: a new list, the joins may change it)
            s = j
        self._units, self._size = units[s:], ends[n] - ends[s]
        if out:
            await self._write(out)

    async def _write(self, frames: list[bytes]) -> None:
        """Write whole WebSocket messages (UTF-8 text, or binary in the binary formats)."""
        self.frames_sent += len(frames)
        many = self._send_binaries if self.fmt.binary else self._send_texts
        if many is None:  # a server without the extension (a test client)
            for frame in frames:
                if self.fmt.binary:
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_text(frame.decode())
            return
        try:
            await many(frames)
        except OSError as exc:  # uvicorn's ClientDisconnected, as Starlette reports it
            raise WebSocketDisconnect(code=1006) from exc
