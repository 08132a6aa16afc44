"""A task as stored: the one record the store, the supervisor and the gateway share."""

from __future__ import annotations

from typing import Any

import msgspec

from core.status import TaskStatus


class TaskRow(msgspec.Struct, kw_only=True):
    """A task as stored."""

    id: str
    requirement: str
    test_mode: bool
    options: dict[str, Any]
    status: TaskStatus
    progress: float
    current_agent: str | None
    last_message: str | None
    created_at: str
    created_ns: int
    queued_at: str | None
    started_at: str | None
    completed_at: str | None
    last_event_id: int
    state_version: int
    run_count: int
    node: str | None
    pid: int | None
    pid_create_time: float | None
    exit_code: int | None
    error: str | None
    epoch: int = 0  # the run's fencing epoch (several nodes, issue 15)
    cancel_request: str | None = None  # a cancel asked through another node
