"""REST routes of the CONTRACT."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from bus.messages import (
    CancelTask,
    FollowUpTask,
    ResumeTask,
    StartTask,
    new_task_id,
    utcnow,
)
from core.settings import Settings
from gateway.control import ControlClient, SupervisorUnavailable
from gateway.models import (
    COMMAND_RESPONSES,
    EventPage,
    MessageIn,
    TaskCreate,
    TaskList,
    TaskOut,
    TicketOut,
    llm_mode,
)
from gateway.security import Guard
from store import Store, TaskRow
from store.eventlog import EventLogUnreadable

router = APIRouter(prefix="/api")
MAX_PAGE = 10_000
PAGE_BYTES = 8 << 20  # an events page stops after the event that reaches this size
READ_BYTES = 1 << 20  # rows read from the log at once, about
MAX_EVENT_ID = 2**63 - 1  # SQLite's INTEGER: beyond it the driver raises (was a 500)


def store_of(request: Request) -> Store:
    return request.app.state.store


def control_of(request: Request) -> ControlClient:
    return request.app.state.control


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(store_of)]
ControlDep = Annotated[ControlClient, Depends(control_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]


async def _task_or_404(store: Store, task_id: str) -> TaskRow:
    row = await anyio.to_thread.run_sync(store.get_task, task_id)
    if row is None:
        raise HTTPException(404, detail="Task not found")
    return row


def _check_length(requirement: str, cfg: Settings) -> None:
    if len(requirement) > cfg.max_requirement:
        limit = cfg.max_requirement
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long",
                    "loc": ("body", "requirement"),
                    "msg": f"requirement is longer than {limit} characters "
                    "(METASTREAM_MAX_REQUIREMENT)",
                    "ctx": {"max_length": limit},
                }
            ]
        )


@router.post("/tasks", status_code=201, response_model=TaskOut)
async def create_task(body: TaskCreate, store: StoreDep, cfg: SettingsDep) -> TaskOut:
    _check_length(body.requirement, cfg)
    if body.synthetic is not None and body.synthetic.run_python is not None and not cfg.test_hooks:
        raise RequestValidationError(
            [
                {
                    "type": "test_hook_off",
                    "loc": ("body", "synthetic", "run_python"),
                    "msg": "run_python is a test hook, off unless METASTREAM_TEST_HOOKS=1",
                }
            ]
        )
    options = body.model_dump(exclude={"requirement", "test_mode"}, exclude_none=True)
    options["llm"] = llm_mode(body, cfg.llm_base_url)
    row = await anyio.to_thread.run_sync(
        store.create_task, new_task_id(), body.requirement, body.test_mode, options, utcnow()
    )
    return TaskOut.of(row)


@router.get("/tasks", response_model=TaskList)
async def list_tasks(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> TaskList:
    rows, total = await anyio.to_thread.run_sync(store.list_tasks, limit, offset)
    return TaskList(tasks=[TaskOut.of(r) for r in rows], total=total, limit=limit, offset=offset)


async def _with_runs(store: Store, task_id: str) -> TaskOut:
    row = await _task_or_404(store, task_id)
    return TaskOut.of(row, await anyio.to_thread.run_sync(store.runs.list, task_id))


@router.get("/tasks/{task_id}", response_model=TaskOut)
async def get_task(task_id: str, store: StoreDep) -> TaskOut:
    return await _with_runs(store, task_id)


async def _command(
    store: Store, control: ControlClient, cfg: Settings, task_id: str, msg: Any, timeout: float
) -> TaskOut:
    await _task_or_404(store, task_id)
    try:
        reply = await control.request(msg, timeout)
    except SupervisorUnavailable as exc:
        raise HTTPException(503, detail=f"Supervisor unavailable: {exc}") from exc
    if not reply.ok:
        status = 404 if reply.error == "Task not found" else 409
        raise HTTPException(status, detail=reply.error)
    return await _with_runs(store, task_id)


@router.post("/tasks/{task_id}/run", response_model=TaskOut, responses=COMMAND_RESPONSES)
async def run_task(task_id: str, store: StoreDep, control: ControlDep, cfg: SettingsDep) -> TaskOut:
    return await _command(store, control, cfg, task_id, StartTask(task_id), cfg.control_timeout)


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut, responses=COMMAND_RESPONSES)
async def cancel_task(
    task_id: str, store: StoreDep, control: ControlDep, cfg: SettingsDep
) -> TaskOut:
    # Cancelling waits for the whole stop sequence, so allow for it on top of the usual timeout.
    budget = cfg.control_timeout + cfg.stop_ask_timeout + cfg.stop_term_timeout + 2
    return await _command(store, control, cfg, task_id, CancelTask(task_id), budget)


@router.post("/tasks/{task_id}/messages", response_model=TaskOut, responses=COMMAND_RESPONSES)
async def send_message(
    task_id: str, body: MessageIn, store: StoreDep, control: ControlDep, cfg: SettingsDep
) -> TaskOut:
    """The next requirement of the conversation: a new run on the COMPLETED task's project.

    Refused (409) while a run is active rather than queued: the follow-up builds on the
    previous run's result, which the user should see before asking for more.
    """
    _check_length(body.requirement, cfg)
    msg = FollowUpTask(task_id, body.requirement)
    return await _command(store, control, cfg, task_id, msg, cfg.control_timeout)


@router.post("/tasks/{task_id}/resume", response_model=TaskOut, responses=COMMAND_RESPONSES)
async def resume_task(
    task_id: str, store: StoreDep, control: ControlDep, cfg: SettingsDep
) -> TaskOut:
    """Continue a CANCELLED or FAILED task from its last completed round (409 if none)."""
    return await _command(store, control, cfg, task_id, ResumeTask(task_id), cfg.control_timeout)


@router.get("/tasks/{task_id}/events", response_model=EventPage)
async def task_events(
    task_id: str,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
) -> Response:
    """Up to ``limit`` events after ``after``, and at most about PAGE_BYTES of them."""
    await _task_or_404(store, task_id)
    # The first read before the response starts: a log that cannot be read (a task may damage
    # its own) is then a clear error answer (502, gateway/app.py), not a cut-off stream.
    first = await anyio.to_thread.run_sync(store.read_events, task_id, after, min(limit, 4))
    return StreamingResponse(
        _event_page(store, task_id, after, limit, first), media_type="application/json"
    )


async def _event_page(
    store: Store, task_id: str, after: int, limit: int, first: list[tuple[int, bytes]]
) -> AsyncIterator[bytes]:
    """The page's JSON, streamed a read at a time: memory is a read's worth, not a page's.

    The log holds each event's JSON already: it is spliced, never decoded and re-encoded.
    ``first`` is the page's first read (up to 4 rows), done before the response started.
    """
    yield b'{"task_id":"%s","events":[' % task_id.encode()
    last, count, size, row_size = after, 0, 0, 0
    pending: list[tuple[int, bytes]] | None = first
    while count < limit and size < PAGE_BYTES:
        want = limit - count
        # Until the size of this log's rows is known, a few (they may be a megabyte each).
        want = max(1, min(want, READ_BYTES // row_size if row_size else 4))
        if pending is not None:
            rows, pending = pending, None
        else:
            try:
                rows = await anyio.to_thread.run_sync(store.read_events, task_id, last, want)
            except EventLogUnreadable:
                # The response has begun: end this page where the log stops being readable;
                # the next page's request starts there and gets the error as a 502.
                break
        if rows:
            chunk = b",".join(d for _, d in rows)
            yield (b"," if count else b"") + chunk
            count += len(rows)
            size += len(chunk)
            row_size = max(1, len(chunk) // len(rows))
            last = rows[-1][0]
        if len(rows) < want:
            break  # the log's end, or a row the store refused (store.checked): asked below
    try:
        more = bool(await anyio.to_thread.run_sync(store.read_events, task_id, last, 1))
    except EventLogUnreadable:
        more = True  # there is more, and the next page's request says what is wrong
    yield b'],"next_after":%d,"has_more":%s}' % (last, b"true" if more else b"false")


@router.post("/tasks/{task_id}/ticket", response_model=TicketOut)
async def task_ticket(task_id: str, store: StoreDep, request: Request) -> TicketOut:
    """A short-lived ticket for this task's WebSocket, for clients that cannot send headers."""
    await _task_or_404(store, task_id)
    guard: Guard = request.app.state.guard
    ticket, expires_in = guard.issue_ticket(task_id)
    return TicketOut(ticket=ticket, expires_in=expires_in)
