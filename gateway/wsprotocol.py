"""uvicorn's sans-I/O WebSocket protocol, plus many text frames per call and per write.

uvicorn writes every ``websocket.send`` to the socket at once: one ``send()`` system call, and
on loopback one wake-up of the reader, per frame; and going through Starlette, uvicorn and the
websockets library costs ~3 us per frame, most of the gateway's time per event. So applications
may send many text frames in one call, through the ASGI scope extension
``metastream.websocket.send_texts`` (``{"send_texts": async callable(list[bytes])}``, each item
one message's UTF-8 text; ``"send_binaries"`` likewise for binary frames). An uncompressed
server frame (unmasked, RFC 6455 5.2) is its 2-10 byte header and the text, queued on the
protocol's own output buffer; the first call of a loop turn is written at once, the rest of
that turn's frames together when it ends (or every 64 KiB). At low rates that is one write per
call, with no added latency. The gateway's event path (gateway/stream.py) sends everything this
way; plain ``websocket.send`` is uvicorn's own, unchanged.

Everything else is uvicorn's: back-pressure (``send_texts`` waits while the transport is
paused), close, keepalive pings. Those write whatever the protocol has framed so far, so
frames keep their order whichever path writes them.

This reaches into uvicorn's and websockets' internals (the attributes listed in
``INTERNALS``); pyproject.toml bounds both to the versions it is tested with, and
tests/gateway/test_wsprotocol_canary.py fails by name if an upgrade removes one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

# What uvicorn.run(ws=...) takes; the gateway and the benchmark baselines use the same one.
WS_PROTOCOL = "gateway.wsprotocol:CoalescingWebSocketProtocol"
FLUSH_BYTES = 64 * 1024  # asyncio's default write-buffer high-water mark
FRAME_OVERHEAD = 10
SEND_TEXTS = "metastream.websocket.send_texts"  # the scope extension offering send_texts


@functools.cache
def deflate_min_bytes() -> int:
    """Messages shorter than this go uncompressed even with permessage-deflate (settings)."""
    from core import settings  # once per process: uvicorn builds a protocol per connection

    return settings.load().ws_deflate_min_bytes


# Every attribute of uvicorn's protocol (and of its websockets connection, ``conn``) used
# here: the canary test checks each on the installed versions.
INTERNALS = {
    "protocol": ("conn", "loop", "transport", "writable", "disconnected", "close_sent"),
    "conn": ("writes", "extensions", "state", "send_text", "send_binary", "data_to_send"),
}


def frame_header(first: int, n: int) -> bytes:
    """An unmasked server frame's header: FIN + opcode, then the length in 7, 7+16 or 7+64 bits."""
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 0x7E)) + n.to_bytes(2, "big")
    return bytes((first, 0x7F)) + n.to_bytes(8, "big")


def _payload_len(wire: bytes) -> int:
    code = wire[1] & 0x7F
    return len(wire) - (2 if code < 126 else 4 if code == 126 else 10)


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """Offers ``send_texts``: many text frames per call, those of one loop turn in one write."""

    _flush_handle: asyncio.Handle | None = None
    _pending = 0  # bytes framed and not yet written (roughly: text length, not UTF-8 size)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][SEND_TEXTS] = {
                "send_texts": self.send_texts,
                "send_binaries": self.send_binaries,
                "write_now": self.write_now,
                "writer_for": self.writer_for,
            }

    def write_now(self, wire: bytes) -> bool:
        """Write one whole framed message (header included) at once, if that is safe now."""
        write = self.writer_for(wire)
        if write is None:
            return False
        write(wire)
        return True

    def writer_for(self, wire: bytes) -> Callable[[bytes], object] | None:
        """The transport's ``write``, if ``wire`` may be written with it now; else None.

        For the hub's live fan-out (gateway/stream.py ``_direct``): one event's frame, built
        once, goes to every idle connection without waking each connection's task. None
        whenever the ordinary path must decide: a paused or closing transport, frames of this
        loop turn not yet written, or a message that permessage-deflate would compress. The
        hub checks every connection first and writes afterwards, all in one loop turn, so
        nothing can change in between (see ``Hub._dispatch``).
        """
        if (
            self._flush_handle is not None
            or self.conn.writes
            or not self.writable.is_set()
            or self.disconnected
            or self.close_sent
            or self.conn.state is not State.OPEN
            or (self.conn.extensions and _payload_len(wire) >= deflate_min_bytes())
            # Closed under us (a reset peer) before uvicorn heard: uvloop's write would raise.
            or self.transport.is_closing()
        ):
            return None
        return self.transport.write

    async def send_texts(self, texts: Sequence[bytes]) -> None:
        """Send text frames (given as UTF-8) in order, FLUSH_BYTES at most per write."""
        await self._send_many(texts, 0x81)

    async def send_binaries(self, frames: Sequence[bytes]) -> None:
        """Send binary frames in order, as :meth:`send_texts` sends text ones."""
        await self._send_many(frames, 0x82)

    async def _send_many(self, texts: Sequence[bytes], first: int) -> None:
        # With compression negotiated, websockets compresses what is long enough to gain
        # from it; shorter messages go as they are (RFC 7692 6.1: RSV1 clear, uncompressed).
        deflate_from = deflate_min_bytes() if self.conn.extensions else 1 << 62
        send = self.conn.send_text if first == 0x81 else self.conn.send_binary
        for text in texts:
            if self._pending >= FLUSH_BYTES:
                self._write()
            if not self.writable.is_set():
                await self.writable.wait()  # uvicorn's back-pressure: a slow reader pauses us
            if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
                raise ClientDisconnected()
            data = text
            n = len(data)
            if n >= deflate_from:
                send(data)
            else:
                # The protocol's own output buffer: frames of every path stay in order.
                self.conn.writes += (frame_header(first, n), data)
            self._pending += FRAME_OVERHEAD + n
        if self._flush_handle is None:
            # As in send: what this turn sends first goes out at once, later sends in the
            # same turn wait for the flush at its end.
            self._write()
            self._flush_handle = self.loop.call_soon(self._flush)
        elif self._pending >= FLUSH_BYTES:
            self._write()

    def _flush(self) -> None:
        self._flush_handle = None
        self._write()

    def _write(self) -> None:
        self._pending = 0
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        super().connection_lost(exc)
