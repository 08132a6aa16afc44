"""A minimal WebSocket client for the bench: frames parsed as they arrive, no task per read.

The ``websockets`` library costs ~30-40 us of Python per received message (frame objects, an
assembler, a queue, a task switch per ``recv``); with 1,000 connections at 20 events/s that is
most of a core, on the same two cores as the gateway it measures. A ``StreamReader`` loop
still woke one task per received chunk (a future, a task step, the reader's bookkeeping: a
third of the client processes' time at 1,000 connections). Here the protocol's
``data_received`` walks the frames in place and hands each message to a callback: what the
measurement needs (the message bytes), nothing else. It speaks just enough of RFC 6455 for a
server that sends whole (unfragmented or fragmented) unmasked messages: it answers pings,
stops at a close, and never offers an extension (permessage-deflate clients use
``websockets``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import urllib.parse
from collections.abc import Callable
from typing import cast

_MASK0 = b"\x00\x00\x00\x00"  # client frames must be masked; a zero key leaves them as is
OnMessage = Callable[[bytes], bool]  # one message's payload; True: enough, close


class HandshakeFailed(RuntimeError):
    """The server did not switch protocols."""


class LeanConnection(asyncio.Protocol):
    """One connection: ``on_message`` gets each message's payload, in order.

    :attr:`opened` resolves to the subprotocol the server named (None: none) once the
    handshake is answered; :attr:`closed` once the connection is over, with the first error
    ``on_message`` raised, if any.
    """

    def __init__(self, request: bytes, on_message: OnMessage) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[str | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._request = request
        self._on_message = on_message
        self._head = b""
        self._buf = b""
        self._parts: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def connect(
        cls, url: str, subprotocol: str | None, on_message: OnMessage
    ) -> LeanConnection:
        """Connect and complete the handshake (messages may already have been handed over)."""
        u = urllib.parse.urlsplit(url)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {u.path + (f'?{u.query}' if u.query else '')} HTTP/1.1",
            f"Host: {u.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: cls(request, on_message), u.hostname or "localhost", u.port or 80
        )
        await conn.opened
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or HandshakeFailed("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4 :]
            status, *fields = head.split("\r\n")
            if " 101 " not in status + " ":
                self.opened.set_exception(HandshakeFailed(status))
                self.close()
                return
            sub = None
            for field in fields:
                name, _, value = field.partition(":")
                if name.strip().lower() == "sec-websocket-protocol":
                    sub = value.strip()
            self.opened.set_result(sub)
        try:
            self._frames(data)
        except Exception as exc:  # the measurement's own callback: reported, not lost
            if not self.closed.done():
                self.closed.set_exception(exc)
            self.close()

    def _frames(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + n:
                break
            payload = buf[pos + head : pos + head + n]
            pos += head + n
            opcode = b0 & 0x0F
            if opcode >= 8:  # control frames
                if opcode == 8:
                    self.close()
                    return
                if opcode == 9 and self._transport is not None:  # ping: pong, same payload
                    self._transport.write(bytes((0x8A, 0x80 | len(payload))) + _MASK0 + payload)
                continue
            if not b0 & 0x80:  # not FIN: a fragment
                self._parts.append(payload)
                continue
            if self._parts:
                self._parts.append(payload)
                payload, self._parts = b"".join(self._parts), []
            if self._on_message(payload):
                self.close()
                return
        self._buf = buf[pos:]

    def close(self) -> None:
        """Send a normal close and drop the connection (without waiting for the answer)."""
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(b"\x88\x82" + _MASK0 + (1000).to_bytes(2, "big"))
            t.close()
