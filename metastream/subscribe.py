"""Programmatic subscribers: follow a task over the ZeroMQ bus or over the WebSocket.

Two async generators, for two different needs:

- :func:`subscribe` reads the bus directly (a ZeroMQ ``SUB`` socket on the stack's XPUB
  endpoint). It is live only: what was published before the subscription reached the bus, or
  while the bus was down, is never delivered. Cheap, no gateway needed, same machine or network.
- :func:`stream` reads the gateway's WebSocket and resumes with ``last_event_id`` after any
  network error or gateway restart, so every event arrives exactly once and in order, then the
  final state. Use it when you need the whole history.

See ``docs/subscribers.md`` for the guide and complete examples.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import websockets
import zmq
import zmq.asyncio

from bus.client import AsyncSubscriber, DecodeFailure, decode_frames
from bus.messages import (
    STATE_FIELDS,
    SYSTEM_TOPIC_PREFIX,
    TERMINAL_STATUSES,
    BusMessage,
    Event,
    Heartbeat,
    State,
    is_task_id,
)
from core import settings

__all__ = [
    "AuthError",
    "Event",
    "GatewayError",
    "GatewayUnreachable",
    "Heartbeat",
    "State",
    "StreamError",
    "TaskNotFound",
    "as_dict",
    "default_url",
    "stream",
    "subscribe",
]

log = logging.getLogger("metastream.subscribe")

CLOSE_NOT_FOUND = 4404
CLOSE_REFUSED = (4401, 4403)  # no valid token or ticket; a browser origin not allowed
# After the final state arrives on the bus, events published just before it by the task process
# (a different publisher, so not ordered with the supervisor's state) get this long to arrive.
FINAL_GRACE_S = 1.0


class StreamError(Exception):
    """Base class of the errors :func:`stream` raises."""


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


class BusUnavailable(Exception):
    """The bus did not prove the subscription live within ``ready_timeout``."""


def bus_problem(endpoint: str, waited: float) -> str:
    """Why nothing came from the bus, naming the endpoint (and a missing ipc socket)."""
    text = f"no answer from the bus at {endpoint} within {waited:g} s"
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :]):
        text += (
            " (the socket does not exist: is the stack running, and are METASTREAM_HOME or "
            "METASTREAM_BUS_SUB the stack's?)"
        )
    return text


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


def as_dict(msg: BusMessage) -> dict[str, Any]:
    """A decoded bus message as the plain map that was on the wire (with ``kind``)."""
    return {"kind": msg.__struct_config__.tag, **msgspec.structs.asdict(msg)}


# --- the bus ---------------------------------------------------------------------------------


async def subscribe(
    task_id: str,
    endpoint: str | None = None,
    *,
    kinds: tuple[str, ...] = ("event", "state", "heartbeat"),
    until_end: bool = True,
    on_ready: Callable[[], None] | None = None,
    ctx: zmq.asyncio.Context | None = None,
    ready_timeout: float | None = None,
) -> AsyncGenerator[Event | State | Heartbeat, None]:
    """Yield a task's live bus messages (:class:`Event`, :class:`State`, :class:`Heartbeat`).

    ``endpoint`` defaults to ``METASTREAM_BUS_SUB`` (the stack's XPUB side). With ``until_end``
    the generator returns after the task's final state (plus a short grace for events still in
    flight); otherwise it runs until the caller stops. ``on_ready`` is called once the
    subscription is proven live end to end (the supervisor's beacon or a task message came
    through): anything published after that is delivered. Nothing before it is: the bus keeps
    no history. With ``ready_timeout``, :class:`BusUnavailable` (naming the endpoint) is raised
    if that proof has not come within so many seconds.
    """
    if not is_task_id(task_id):
        # Only canonical ids are safe prefixes: "abc" would match every task starting with it.
        raise ValueError(f"not a task id (a canonical 36-character UUID): {task_id!r}")
    unknown = set(kinds) - {"event", "state", "heartbeat"}
    if unknown:
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    endpoint = endpoint or settings.load().bus_sub
    sub = AsyncSubscriber(endpoint, ctx)
    try:
        prefixes = [task_id] if len(kinds) == 3 else [f"{task_id}/{k}" for k in kinds]
        sub.subscribe(prefixes)
        if on_ready is not None or ready_timeout is not None:
            sub.subscribe([SYSTEM_TOPIC_PREFIX + b"supervisor/"])
        ready = on_ready is None and ready_timeout is None
        highest = 0
        final: State | None = None
        while True:
            if not ready and ready_timeout is not None:
                try:
                    async with asyncio.timeout(ready_timeout):
                        frames = await sub.recv_frames()
                except TimeoutError:
                    raise BusUnavailable(bus_problem(endpoint, ready_timeout)) from None
            elif final is None:
                frames = await sub.recv_frames()
            else:
                try:
                    async with asyncio.timeout(FINAL_GRACE_S):
                        frames = await sub.recv_frames()
                except TimeoutError:
                    return
            if not ready:
                ready = True
                sub.unsubscribe(SYSTEM_TOPIC_PREFIX + b"supervisor/")
                if on_ready is not None:
                    on_ready()
            if frames and frames[0].startswith(SYSTEM_TOPIC_PREFIX):
                continue
            _tid, msg = decode_frames(frames)
            if isinstance(msg, DecodeFailure):
                log.warning("skipped an undecodable bus frame: %s", msg.error)
                continue
            if not isinstance(msg, Event | State | Heartbeat):
                continue  # kinds added later (never on a task's topics today)
            if isinstance(msg, Event):
                highest = max(highest, msg.event_id)
            yield msg
            if isinstance(msg, State) and until_end and msg.status in TERMINAL_STATUSES:
                final = msg
            if final is not None and ("event" not in kinds or highest >= final.last_event_id):
                return
    finally:
        sub.close()


# --- the WebSocket ---------------------------------------------------------------------------


# The gateway's opt-in frame formats (gateway/frames.py, docs/subscribers.md), fastest first.
MSGPACK_BATCH = "metastream.msgpack.batch.v1"
MSGPACK = "metastream.msgpack.v1"
JSON_BATCH = "metastream.batch.v1"
FASTEST = (MSGPACK_BATCH, JSON_BATCH)
_msgpack = msgspec.msgpack.Decoder()


def decode_frame(raw: str | bytes, subprotocol: str | None) -> list[dict[str, Any]]:
    """The seed messages ``{"type", "data"}`` in one frame of the negotiated format."""
    if subprotocol in (MSGPACK_BATCH, MSGPACK):
        if not isinstance(raw, bytes):
            raise _Reconnect(f"a text frame in format {subprotocol}")
        try:
            obj = _msgpack.decode(raw)
        except msgspec.DecodeError as exc:
            raise _Reconnect(f"undecodable frame: {exc}") from exc
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


class _Reconnect(Exception):
    """Internal: drop this connection and resume from the last event."""


def _backoff(attempt: int) -> float:
    # Exponential with jitter so that many clients of a restarted gateway don't reconnect at once.
    return min(0.2 * 2 ** (attempt - 1), 5.0) * random.uniform(0.75, 1.25)


def _http_check(resp: httpx.Response) -> None:
    if resp.status_code == 404:
        raise TaskNotFound(_detail(resp) or "Task not found")
    if resp.status_code in (401, 403):
        raise AuthError(_detail(resp) or f"HTTP {resp.status_code}")
    if resp.status_code >= 500:
        raise _Reconnect(f"HTTP {resp.status_code}: {_detail(resp)}")
    if resp.status_code >= 400:
        raise GatewayError(resp.status_code, _detail(resp))


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail is not None else resp.text[:200]


async def stream(
    task_id: str,
    url: str | None = None,
    last_event_id: int = 0,
    token: str | None = None,
    *,
    retries: int = 20,
    idle_timeout: float = 60.0,
    open_timeout: float = 10.0,
    http_timeout: float = 10.0,
    on_status: Callable[[str, str], None] | None = None,
    subprotocols: tuple[str, ...] = FASTEST,
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield a task's WebSocket messages (``{"type", "data"}``), resuming after failures.

    Every event with ``event_id > last_event_id`` is yielded exactly once, in order; the
    generator returns after the final ``state``. Lost connections (network errors, a gateway
    restart, nothing received for ``idle_timeout`` s) are resumed with ``last_event_id``; after
    ``retries`` consecutive failed attempts it raises :class:`GatewayUnreachable`. A task that
    has already ended is read from the REST event log instead, so following a ``FAILED`` task
    never restarts it (a WebSocket connection would). ``on_status(state, detail)`` hears
    ``"connecting"``, ``"live"`` and ``"reconnecting"``. ``subprotocols`` are the frame
    formats to offer, fastest first (``()``: the seed's JSON); what the gateway picks is
    decoded back into the same messages, and a gateway that knows none sends the seed's.
    """
    url = (url or default_url()).rstrip("/")
    # As the CLI does: a program run where the CLI works needs no token argument.
    token = token or os.environ.get("METASTREAM_API_TOKEN") or None
    notify = on_status or (lambda _state, _detail: None)
    last = last_event_id
    failures = 0
    headers = auth_headers(token)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=http_timeout) as http:
        while True:
            notify("connecting", url)
            try:
                resp = await http.get(f"/api/tasks/{task_id}")
                _http_check(resp)
                task = resp.json()
                if task["status"] in TERMINAL_STATUSES:
                    async for msg in _from_log(http, task_id, last):
                        last = msg["data"]["event_id"]
                        yield msg
                    yield {"type": "state", "data": {k: task.get(k) for k in STATE_FIELDS}}
                    return
                ws_url = f"{ws_base(url)}/ws/tasks/{task_id}?last_event_id={last}"
                async with websockets.connect(
                    ws_url,
                    additional_headers=headers,
                    open_timeout=open_timeout,
                    max_size=None,
                    subprotocols=[websockets.Subprotocol(p) for p in subprotocols] or None,
                ) as ws:
                    live = False
                    while True:
                        try:
                            async with asyncio.timeout(idle_timeout):
                                raw = await ws.recv()
                        except TimeoutError as exc:
                            raise _Reconnect(f"nothing received for {idle_timeout:g} s") from exc
                        for msg in decode_frame(raw, ws.subprotocol):
                            kind = msg.get("type")
                            data = msg.get("data") or {}
                            if kind == "connected" and not live:
                                live = True
                                notify("live", f"{url} ({ws.subprotocol or 'json'} frames)")
                            if kind == "event":
                                event_id = data["event_id"]
                                if event_id <= last:
                                    continue  # already yielded before a reconnect
                                if event_id != last + 1:
                                    raise _Reconnect(f"gap: event {event_id} after {last}")
                                last = event_id
                            if kind in ("event", "heartbeat"):
                                # Only progress (or the server's idle beat) proves the link
                                # works: a handshake followed by an error must not reset the
                                # retry budget.
                                failures = 0
                            elif kind == "error" and data.get("message") == "Task not found":
                                raise TaskNotFound("Task not found")
                            yield msg
                            if kind == "state" and data.get("status") in TERMINAL_STATUSES:
                                return
            except websockets.ConnectionClosed as exc:
                code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
                if code == CLOSE_NOT_FOUND:
                    raise TaskNotFound("Task not found") from exc
                if code in CLOSE_REFUSED:
                    raise AuthError(f"WebSocket closed {code}: {reason}") from exc
                why = f"connection closed ({exc})"
            except websockets.InvalidStatus as exc:
                code = exc.response.status_code
                if code in (401, 403):
                    raise AuthError(f"WebSocket refused: HTTP {code}") from exc
                if code < 500:
                    raise GatewayError(code, "WebSocket handshake refused") from exc
                why = f"WebSocket handshake: HTTP {code}"
            except (OSError, TimeoutError, websockets.InvalidHandshake, httpx.TransportError) as e:
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except _Reconnect as exc:
                why = str(exc)
            failures += 1
            if failures > retries:
                raise GatewayUnreachable(
                    f"gave up after {retries} retries: {why} (last event {last})"
                )
            delay = _backoff(failures)
            notify("reconnecting", f"{why}; retry {failures}/{retries} in {delay:.1f} s")
            await asyncio.sleep(delay)


async def _from_log(
    http: httpx.AsyncClient, task_id: str, after: int, page: int = 5000
) -> AsyncIterator[dict[str, Any]]:
    """Events after ``after`` from the REST log, as WebSocket ``event`` messages."""
    while True:
        resp = await http.get(
            f"/api/tasks/{task_id}/events", params={"after": after, "limit": page}
        )
        _http_check(resp)
        body = resp.json()
        for ev in body["events"]:
            if ev["event_id"] > after:
                after = ev["event_id"]
                yield {"type": "event", "data": ev}
        if not body.get("has_more"):
            return
