"""The WebSocket route: access checks, then a thin handler over :class:`TaskStream`.

Every check happens before the task is looked up, so a client that fails one learns nothing
about the task (not even whether it exists). A rejected client is accepted, told why in one
``error`` message, and closed with a code (browsers cannot see an HTTP status on a failed
upgrade): 4403 foreign Origin, 4401 no valid token or ticket, 4429 too many connections from
its address, 4400 an unknown ``?format=``. Frames from clients are capped by uvicorn
(``ws_max_size``, close code 1009).
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket

from gateway.frames import CLOSE_BAD_FORMAT, BadFormat, negotiate
from gateway.limits import client_address
from gateway.security import Guard
from gateway.stream import CLOSE_TOO_MANY, TaskStream

router = APIRouter()


async def _reject(websocket: WebSocket, code: int, message: str) -> None:
    websocket.app.state.metrics.closed(code)
    await websocket.accept()
    # The client may already be gone; there is nothing more to tell it then.
    with contextlib.suppress(RuntimeError, OSError):
        await websocket.send_json({"type": "error", "data": {"message": message}})
        await websocket.close(code, reason=message[:120])


@router.websocket("/ws/tasks/{task_id}")
async def task_stream(
    websocket: WebSocket,
    task_id: str,
    last_event_id: Annotated[int, Query(ge=0)] = 0,
    ticket: Annotated[str | None, Query(max_length=200)] = None,
    start: Annotated[bool, Query(description="auto-start a PENDING/FAILED task")] = True,
    format_: Annotated[str | None, Query(alias="format", max_length=40)] = None,
) -> None:
    state = websocket.app.state
    guard: Guard = state.guard
    code, message = guard.ws_problem(websocket.headers, task_id, ticket)
    if code:
        await _reject(websocket, code, message)
        return
    # Opt-in frame formats (gateway.frames); rejections above and here use the default one.
    try:
        fmt, subprotocol = negotiate(websocket.scope.get("subprotocols") or [], format_)
    except BadFormat as exc:
        await _reject(websocket, CLOSE_BAD_FORMAT, str(exc))
        return
    address = client_address(websocket.scope)
    if not state.ws_clients.acquire(address):
        state.counters["ws_per_client_rejected"] += 1
        limit = state.ws_clients.limit
        await _reject(
            websocket,
            CLOSE_TOO_MANY,
            f"Too many connections from your address (limit {limit}, METASTREAM_WS_MAX_PER_CLIENT)",
        )
        return
    try:
        stream = TaskStream(
            websocket,
            task_id,
            last_event_id,
            store=state.store,
            log=state.log_reader,
            hub=state.hub,
            control=state.control,
            cfg=state.settings,
            autostart=start,
            metrics=state.metrics,
            fmt=fmt,
            subprotocol=subprotocol,
            frame_cache=state.frame_cache,
        )
        await stream.run()
    finally:
        state.ws_clients.release(address)
