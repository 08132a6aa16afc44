"""Resuming a task's WebSocket stream: the one Python implementation of the client's side.

A follower connects with ``?last_event_id=N`` (the last event it has), reads frames in the
format it negotiated, and after a lost connection connects again from where it is. The
library's :func:`metastream.subscribe.stream` and the tests' resilient client
(``tests/helpers.follow``) are both built from these parts; the web page has its own, in
JavaScript (``gateway/static/js``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

CLOSE_NOT_FOUND = 4404
CLOSE_REFUSED = (4401, 4403)  # no valid token or ticket; a browser origin not allowed

# The gateway's opt-in frame formats (gateway/frames.py, docs/subscribers.md), fastest first.
MSGPACK_BATCH = "metastream.msgpack.batch.v1"
MSGPACK = "metastream.msgpack.v1"
JSON_BATCH = "metastream.batch.v1"
FASTEST = (MSGPACK_BATCH, JSON_BATCH)
_msgpack = msgspec.msgpack.Decoder()


class StreamError(Exception):
    """Base class of the errors :func:`metastream.subscribe.stream` raises."""


class TaskNotFound(StreamError):
    """The gateway does not know the task."""


class AuthError(StreamError):
    """The gateway refused our credentials (401/403)."""


class GatewayError(StreamError):
    """The gateway answered with an unexpected HTTP error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class GatewayUnreachable(StreamError):
    """Gave up after the allowed number of consecutive failed attempts."""


class Reconnect(Exception):
    """Drop this connection and resume from the last event (a gap, silence, a bad frame)."""


# What a lost connection raises; :func:`retry_reason` says why, or raises if retrying is futile.
RETRYABLE = (
    websockets.ConnectionClosed,
    websockets.InvalidHandshake,  # (InvalidStatus among them)
    OSError,
    TimeoutError,
    Reconnect,
)


def default_url(environ: dict[str, str] | None = None) -> str:
    """The gateway URL: ``METASTREAM_URL``, else ``http://127.0.0.1:$PORT`` (8000)."""
    env = os.environ if environ is None else environ
    return env.get("METASTREAM_URL") or f"http://127.0.0.1:{env.get('PORT') or 8000}"


def ws_base(url: str) -> str:
    """The WebSocket base URL of an ``http(s)://`` gateway URL."""
    url = url.rstrip("/")
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def resume_url(base: str, task_id: str, last_event_id: int) -> str:
    """The stream of ``task_id`` after event ``last_event_id`` (``base``: ws:// or wss://)."""
    return f"{base}/ws/tasks/{task_id}?last_event_id={last_event_id}"


def connect(
    url: str, subprotocols: tuple[str, ...], open_timeout: float = 10.0, **kw: Any
) -> websockets.connect:
    """Open a stream connection offering ``subprotocols`` (``()``: the seed's JSON)."""
    return websockets.connect(
        url,
        open_timeout=open_timeout,
        max_size=None,
        subprotocols=[websockets.Subprotocol(p) for p in subprotocols] or None,
        **kw,
    )


def decode_frame(raw: str | bytes, subprotocol: str | None) -> list[dict[str, Any]]:
    """The seed messages ``{"type", "data"}`` in one frame of the negotiated format."""
    if subprotocol in (MSGPACK_BATCH, MSGPACK):
        if not isinstance(raw, bytes):
            raise Reconnect(f"a text frame in format {subprotocol}")
        try:
            obj = _msgpack.decode(raw)
        except msgspec.DecodeError as exc:
            raise Reconnect(f"undecodable frame: {exc}") from exc
        maps = obj if subprotocol == MSGPACK_BATCH else [obj]
        out = []
        for m in maps:
            kind = m.pop("kind", None)
            if kind == "state":  # bus-only extras: the seed's state has neither
                m.pop("last_event_id", None)
                m.pop("version", None)
            out.append({"type": kind, "data": m})
        return out
    msg = json.loads(raw)
    return msg if subprotocol == JSON_BATCH else [msg]


async def frames(ws: ClientConnection, idle_timeout: float) -> AsyncIterator[list[dict[str, Any]]]:
    """Each frame's messages until the connection ends; :class:`Reconnect` after silence."""
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                raw = await ws.recv()
        except TimeoutError as exc:
            raise Reconnect(f"nothing received for {idle_timeout:g} s") from exc
        yield decode_frame(raw, ws.subprotocol)


class Cursor:
    """Where a follower is: the last event it has, so each event is taken once and in order."""

    def __init__(self, last_event_id: int = 0) -> None:
        self.last = last_event_id

    def admit(self, msg: dict[str, Any]) -> bool:
        """False for an event already taken (before a reconnect); :class:`Reconnect` on a gap."""
        if msg.get("type") != "event":
            return True
        event_id = (msg.get("data") or {})["event_id"]
        if event_id <= self.last:
            return False
        if event_id != self.last + 1:
            raise Reconnect(f"gap: event {event_id} after {self.last}")
        self.last = event_id
        return True


def retry_reason(exc: BaseException) -> str:
    """Why a connection was lost, to retry after; raises the error for a refusal to retry."""
    if isinstance(exc, websockets.ConnectionClosed):
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        if code == CLOSE_NOT_FOUND:
            raise TaskNotFound("Task not found") from exc
        if code in CLOSE_REFUSED:
            raise AuthError(f"WebSocket closed {code}: {reason}") from exc
        return f"connection closed ({exc})"
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            raise AuthError(f"WebSocket refused: HTTP {status}") from exc
        if status < 500:
            raise GatewayError(status, "WebSocket handshake refused") from exc
        return f"WebSocket handshake: HTTP {status}"
    if isinstance(exc, Reconnect):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def backoff(attempt: int) -> float:
    """Exponential with jitter, so many clients of a restarted gateway don't reconnect at once."""
    return min(0.2 * 2 ** (attempt - 1), 5.0) * random.uniform(0.75, 1.25)
