"""Follow a task over the gateway's WebSocket, resuming after failures: :func:`stream`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx

from bus.messages import STATE_FIELDS, TERMINAL_STATUSES
from metastream.ws_resume import (
    FASTEST,
    RETRYABLE,
    AuthError,
    Cursor,
    GatewayError,
    GatewayUnreachable,
    Reconnect,
    TaskNotFound,
    auth_headers,
    backoff,
    connect,
    default_url,
    frames,
    resume_url,
    retry_reason,
    ws_base,
)


def _http_check(resp: httpx.Response) -> None:
    if resp.status_code == 404:
        raise TaskNotFound(_detail(resp) or "Task not found")
    if resp.status_code in (401, 403):
        raise AuthError(_detail(resp) or f"HTTP {resp.status_code}")
    if resp.status_code >= 500:
        raise Reconnect(f"HTTP {resp.status_code}: {_detail(resp)}")
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
    cursor = Cursor(last_event_id)
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
                    async for msg in _from_log(http, task_id, cursor.last):
                        cursor.last = msg["data"]["event_id"]
                        yield msg
                    yield {"type": "state", "data": {k: task.get(k) for k in STATE_FIELDS}}
                    return
                async with connect(
                    resume_url(ws_base(url), task_id, cursor.last),
                    subprotocols,
                    open_timeout,
                    additional_headers=headers,
                ) as ws:
                    live = False
                    async for messages in frames(ws, idle_timeout):
                        for msg in messages:
                            kind = msg.get("type")
                            data = msg.get("data") or {}
                            if kind == "connected" and not live:
                                live = True
                                notify("live", f"{url} ({ws.subprotocol or 'json'} frames)")
                            if not cursor.admit(msg):
                                continue  # already yielded before a reconnect
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
            except (*RETRYABLE, httpx.TransportError) as exc:
                why = retry_reason(exc)
            failures += 1
            if failures > retries:
                raise GatewayUnreachable(
                    f"gave up after {retries} retries: {why} (last event {cursor.last})"
                )
            delay = backoff(failures)
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
