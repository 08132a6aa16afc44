"""A minimal WebSocket client receive loop for the bench: no per-frame objects or tasks.

The ``websockets`` library costs ~30-40 us of Python per received message (frame objects, an
assembler, a queue, a task switch per ``recv``); with 1,000 connections at 20 events/s that is
most of a core, on the same two cores as the gateway it measures. This loop reads the socket
in 64 KiB chunks and walks the frames in place: what the measurement needs (the message
bytes), nothing else. It speaks just enough of RFC 6455 for a server that sends whole
(unfragmented or fragmented) unmasked messages: it answers pings, stops at a close, and never
offers an extension (permessage-deflate clients use ``websockets``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import urllib.parse
from collections.abc import AsyncIterator

_MASK0 = b"\x00\x00\x00\x00"  # client frames must be masked; a zero key leaves them as is


class HandshakeFailed(RuntimeError):
    """The server did not switch protocols, or named another subprotocol."""


class LeanConnection:
    """One connection: :meth:`messages` yields each message's payload (bytes) in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.subprotocol: str | None = None

    @classmethod
    async def connect(cls, url: str, subprotocol: str | None) -> LeanConnection:
        u = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 80, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + (f"?{u.query}" if u.query else "")
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {u.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status, *fields = head.split("\r\n")
        if " 101 " not in status + " ":
            writer.close()
            raise HandshakeFailed(status)
        conn = cls(reader, writer)
        for field in fields:
            name, _, value = field.partition(":")
            if name.strip().lower() == "sec-websocket-protocol":
                conn.subprotocol = value.strip()
        return conn

    async def messages(self) -> AsyncIterator[bytes]:
        """Every message until the server closes (a close frame or end of stream)."""
        buf = b""
        parts: list[bytes] = []
        read = self._reader.read
        while True:
            chunk = await read(1 << 16)
            if not chunk:
                return
            buf = buf + chunk if buf else chunk
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
                        return
                    if opcode == 9:  # ping: pong with the same payload
                        self._writer.write(bytes((0x8A, 0x80 | len(payload))) + _MASK0 + payload)
                    continue
                if b0 & 0x80:  # FIN
                    if parts:
                        parts.append(payload)
                        payload, parts = b"".join(parts), []
                    yield payload
                else:
                    parts.append(payload)
            buf = buf[pos:]

    async def close(self) -> None:
        """Send a normal close and drop the connection (without waiting for the answer)."""
        if not self._writer.is_closing():
            self._writer.write(b"\x88\x82" + _MASK0 + (1000).to_bytes(2, "big"))
            self._writer.close()
