"""The WebSocket route: access checks, then a thin handler over :class:`TaskStream`.

Every check happens before the task is looked up, so a client that fails one learns nothing
about the task (not even whether it exists). A rejected client is accepted, told why in one
``error`` message, and closed with a code (browsers cannot see an HTTP status on a failed
upgrade): 4403 foreign Origin, 4401 no valid token or ticket, 4400 a bad query parameter
(an unknown ``?format=`` too), 4429 too many connections from its address. Frames from
clients are capped by uvicorn
(``ws_max_size``, close code 1009).
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket

from gateway.api import MAX_EVENT_ID
from gateway.frames import BadFormat, negotiate
from gateway.limits import client_address
from gateway.security import Guard, is_loopback
from gateway.stream import CLOSE_TOO_MANY, TaskStream

router = APIRouter()
CLOSE_BAD_REQUEST = 4400
_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}
# ``follow=conversation``: stay connected after a run's final state (see README Conversations).
FOLLOW_MODES = (None, "task", "conversation")


async def _reject(websocket: WebSocket, code: int, message: str) -> None:
    websocket.app.state.metrics.closed(code)
    await websocket.accept()
    # The client may already be gone; there is nothing more to tell it then.
    with contextlib.suppress(RuntimeError, OSError):
        await websocket.send_json({"type": "error", "data": {"message": message}})
        await websocket.close(code, reason=message[:120])


def _parse_params(last_event_id: str | None, start: str | None) -> tuple[int, bool, str]:
    """``(last_event_id, start, "")``, or a message naming the bad parameter."""
    resume = 0
    if last_event_id is not None:
        text = last_event_id.strip()
        if not text.isdigit() or len(text) > 19 or int(text) > MAX_EVENT_ID:
            return (
                0,
                True,
                (
                    f"Invalid last_event_id {last_event_id[:40]!r}: "
                    f"an integer from 0 to {MAX_EVENT_ID} is required"
                ),
            )
        resume = int(text)
    if start is None:
        return resume, True, ""
    flag = start.strip().lower()
    if flag not in _BOOLS:
        return resume, True, f"Invalid start {start[:40]!r}: true or false is required"
    return resume, _BOOLS[flag], ""


@router.websocket("/ws/tasks/{task_id}")
async def task_stream(
    websocket: WebSocket,
    task_id: str,
    # Parsed here, not by FastAPI: its validation failure on a WebSocket is a bare 403 at the
    # handshake (or, out of range, a 1006 later), which tells the client nothing.
    last_event_id: Annotated[str | None, Query(description=f"0..{2**63 - 1}")] = None,
    ticket: str | None = None,
    start: Annotated[str | None, Query(description="auto-start a PENDING/FAILED task")] = None,
    format_: Annotated[str | None, Query(alias="format", description="frame format")] = None,
    follow: Annotated[
        str | None,
        Query(description="conversation: stay connected after a final state for the next run"),
    ] = None,
) -> None:
    state = websocket.app.state
    guard: Guard = state.guard
    code, message = guard.ws_problem(websocket.headers, task_id, ticket)
    if code:
        await _reject(websocket, code, message)
        return
    resume, autostart, problem = _parse_params(last_event_id, start)
    if not problem and follow not in FOLLOW_MODES:
        problem = f"Invalid follow {follow[:40]!r}: task or conversation is required"
    if problem:
        state.counters["ws_bad_request"] += 1
        await _reject(websocket, CLOSE_BAD_REQUEST, problem)
        return
    # Opt-in frame formats (gateway.frames); rejections above and here use the default one.
    try:
        fmt, subprotocol = negotiate(websocket.scope.get("subprotocols") or [], format_)
    except BadFormat as exc:
        state.counters["ws_bad_request"] += 1
        await _reject(websocket, CLOSE_BAD_REQUEST, str(exc))
        return
    address = client_address(websocket.scope)
    # Without a token every loopback client is the one local user: a per-address count would
    # only let one of the user's programs lock the others out (the per-task limit still holds).
    limited = guard.enabled or not is_loopback(address)
    if not state.ws_clients.acquire(address, limited):
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
            resume,
            store=state.store,
            log=state.log_reader,
            hub=state.hub,
            control=state.control,
            cfg=state.settings,
            autostart=autostart,
            metrics=state.metrics,
            conversation=follow == "conversation",
            fmt=fmt,
            subprotocol=subprotocol,
            frame_cache=state.frame_cache,
            rows=state.task_rows,
        )
        await stream.run()
    finally:
        state.ws_clients.release(address)
