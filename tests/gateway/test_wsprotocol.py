"""The coalescing WebSocket protocol under a real uvicorn: order, close, back-pressure."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import websockets

from metastream.stack import free_port
from tests.helpers import poll_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.gateway.wsapp", str(port)])
    base = f"127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"http://{base}/status", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll_for(up, 20, what="the test server")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def status(server: str) -> dict:
    return httpx.get(f"http://{server}/status", timeout=5).json()


def test_a_burst_arrives_whole_in_order_before_the_close(server: str) -> None:
    async def scenario() -> tuple[list[str], int | None]:
        got: list[str] = []
        async with websockets.connect(f"ws://{server}/ws/burst?n=5000", open_timeout=10) as ws:
            try:
                while True:
                    got.append(str(await asyncio.wait_for(ws.recv(), 10)))
            except websockets.ConnectionClosedOK:
                pass
            return got, ws.close_code

    got, code = asyncio.run(scenario())
    assert got == [str(i) for i in range(5000)]  # separate text frames, none lost or merged
    assert code == 1000


class RawClient:
    """A WebSocket client on a bare socket with a small receive buffer: it reads only when told."""

    def __init__(self, server: str, path: str, headers: str = "") -> None:
        host, port = server.split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.head = head.decode()
        self.rsv1: list[bool] = []  # per frame: compressed (permessage-deflate)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "connection closed mid-frame"
            self.buf += chunk

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(opcode, payload) of each frame until the close frame (server frames: unmasked)."""
        while True:
            self._need(2)
            opcode, length = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            self.rsv1.append(bool(self.buf[0] & 0x40))
            start = 2
            if length == 126:
                self._need(4)
                length, start = struct.unpack("!H", self.buf[2:4])[0], 4
            elif length == 127:
                self._need(10)
                length, start = struct.unpack("!Q", self.buf[2:10])[0], 10
            self._need(start + length)
            payload, self.buf = self.buf[start : start + length], self.buf[start + length :]
            yield opcode, payload
            if opcode == 8:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("via", ["send", "texts"])
def test_a_client_that_stops_reading_holds_the_sender_back(server: str, via: str) -> None:
    n, size = 100_000, 1000  # 100 MB if nothing pushed back
    client = RawClient(server, f"/ws/flood?n={n}&size={size}&via={via}")
    try:
        # Not reading: once the socket buffers are full the server's sends must stall.
        seen: list[int] = []

        def settled() -> bool:
            seen.append(status(server)["sent"])
            return len(seen) > 3 and seen[-1] == seen[-4] > 0

        poll_for(settled, 30, 0.1, "the sender to stall")
        assert seen[-1] < n // 10, f"{seen[-1]} frames of {size} B sent to a client not reading"
        # Then read everything: all of it arrives, in order, as text frames.
        ids = [int(p[:8]) for op, p in client.frames() if op == 1]
    finally:
        client.close()
    assert ids == list(range(n))
    assert status(server)["outcome"] == "done"


@pytest.mark.parametrize("via", ["send", "texts"])
def test_sending_to_a_gone_client_raises_instead_of_buffering(server: str, via: str) -> None:
    async def scenario() -> None:
        async with websockets.connect(
            f"ws://{server}/ws/flood?n=10000000&size=100&yield_every=100&via={via}",
            open_timeout=10,
        ) as ws:
            await ws.recv()
        # closed from our side after one frame

    asyncio.run(scenario())
    outcome = poll_for(
        lambda: (o := status(server)["outcome"]) != "running" and o, 20, what="the sender to stop"
    )
    assert outcome.startswith("disconnected"), outcome
    assert status(server)["sent"] < 10_000_000


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("compression", [None, "deflate"])
def test_pages_of_frames_keep_their_order_with_single_sends(
    server: str, compression: str | None, binary: bool
) -> None:
    """send_texts frames every length encoding itself, or through websockets when compressed."""
    from tests.gateway.wsapp import mixed_frame

    pages = 30

    async def scenario() -> tuple[list[str | bytes], int | None]:
        got: list[str | bytes] = []
        async with websockets.connect(
            f"ws://{server}/ws/mixed?pages={pages}{'&binary=1' if binary else ''}",
            open_timeout=10,
            max_size=None,
            compression=compression,
        ) as ws:
            try:
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), 10))
            except websockets.ConnectionClosedOK:
                pass
            return got, ws.close_code

    got, code = asyncio.run(scenario())
    want: list[str | bytes] = []
    for page in range(pages):
        frames = [mixed_frame(page, k) for k in range(10)]
        want += [f if binary else f.decode() for f in frames] + [f"page {page} done"]
    assert got == want  # text (str) or binary frames, whole, in order among the ordinary sends
    assert code == 1000


def test_deflate_compresses_only_messages_above_the_threshold(server: str) -> None:
    from gateway.wsprotocol import deflate_min_bytes
    from tests.gateway.wsapp import mixed_frame

    client = RawClient(
        server, "/ws/mixed?pages=2", "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    )
    try:
        assert "permessage-deflate" in client.head
        frames = list(client.frames())
    finally:
        client.close()
    sizes = [len(mixed_frame(0, k)) for k in range(10)]
    # (the server's own "page N done" sends go through websockets: compressed whatever size)
    compressed = [c for c, (op, _) in zip(client.rsv1, frames, strict=True) if op != 8][:10]
    assert compressed == [n >= deflate_min_bytes() for n in sizes]
    assert any(compressed) and not all(compressed)


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_direct_writes_wait_for_the_turns_frames_and_keep_the_order(
    server: str, compression: str | None
) -> None:
    """write_now refuses while frames of the loop turn are unwritten, and deflatable ones."""
    n = 20

    async def scenario() -> list[str]:
        got: list[str] = []
        async with websockets.connect(
            f"ws://{server}/ws/direct?n={n}", open_timeout=10, max_size=None,
            compression=compression,
        ) as ws:  # fmt: skip
            try:
                while True:
                    got.append(str(await asyncio.wait_for(ws.recv(), 10))[:6].rstrip("y"))
            except websockets.ConnectionClosedOK:
                pass
        return got

    got = asyncio.run(scenario())
    assert got == [f"{i}-{x}" for i in range(n) for x in "abcd"]
    counts = status(server)
    # "c" always waits for the page's flush; "d" (70 kB) goes direct unless it would be
    # compressed (deflate negotiated, above the 1 KiB default threshold).
    assert counts["refused"] == (2 * n if compression else n)
    assert counts["direct"] == (0 if compression else n)
