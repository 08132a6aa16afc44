"""Slowloris (issue 21): connections trickling a request head are closed, others are served."""

from __future__ import annotations

import selectors
import socket
import time

import httpx

from metastream.stack import Stack

N = 100
HEAD_TIMEOUT = 2.0


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def test_trickled_request_heads_are_closed(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(env={"METASTREAM_HEAD_TIMEOUT": str(HEAD_TIMEOUT)})
    socks = []
    for i in range(N):
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 else b"G")
        sock.setblocking(False)
        socks.append(sock)
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    started = time.monotonic()
    open_ = set(socks)
    try:
        # Trickle one header byte per connection every 0.5 s (each a sign of life), for up to
        # four times the head timeout; the server must close every one of them meanwhile.
        while open_ and time.monotonic() - started < 4 * HEAD_TIMEOUT:
            for sock in list(open_):
                try:
                    sock.send(b"X")
                except OSError:
                    open_.discard(sock)
            for key, _ in sel.select(timeout=0.5):
                sock = key.fileobj  # type: ignore[assignment]
                if sock in open_ and _closed_by_server(sock):  # type: ignore[arg-type]
                    open_.discard(sock)  # type: ignore[arg-type]
            # A well-behaved client is served all along.
            assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert not open_, f"{len(open_)} of {N} trickling connections still open after {elapsed:.1f} s"
    assert elapsed < HEAD_TIMEOUT + 3


def test_a_slow_but_complete_head_and_keep_alive_are_fine(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(env={"METASTREAM_HEAD_TIMEOUT": str(HEAD_TIMEOUT)})
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        for _ in range(2):  # two requests on one connection, each head in pieces
            for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
                sock.sendall(part)
                time.sleep(HEAD_TIMEOUT / 4)  # pacing the client, not a wait
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
