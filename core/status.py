"""A task's status and the one table of the moves between them."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class TaskStatus(StrEnum):
    """A task's status; the values are the contract's strings (``status == "RUNNING"`` holds)."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# The one table: every status change anywhere goes through Store.transition, which checks it.
# FAILED -> QUEUED is a retry (POST /run, or a WebSocket connecting to a FAILED task) or a
# resume (POST /resume); COMPLETED -> QUEUED is a follow-up run (POST /messages) and
# CANCELLED -> QUEUED a resume: only those two commands move a task out of COMPLETED or
# CANCELLED (runner.supervisor.Supervisor.start refuses them for a plain start).
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.COMPLETED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.QUEUED}),
}
TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
INITIAL = TaskStatus.PENDING


class TransitionError(ValueError):
    """A status change the table (or the row's current status) does not allow."""

    def __init__(self, task_id: str, expected: Iterable[str], got: str, to: str) -> None:
        self.task_id = task_id
        self.expected = tuple(expected)
        self.got = got
        self.to = to
        wanted = " or ".join(self.expected) or "nothing"
        super().__init__(f"task {task_id} -> {to}: expected {wanted}, got {got}")


class Fenced(TransitionError):
    """The row is in an expected status but at another run epoch (several nodes): the run
    that asked was taken over or its claim released."""

    def __init__(self, task_id: str, got: str, to: str, epoch: int, current: int) -> None:
        super().__init__(task_id, (got,), got, to)
        self.args = (
            f"task {task_id} -> {to}: run epoch {epoch} is stale (now {current}): "
            "the run was taken over",
        )


def sources(to: TaskStatus) -> tuple[TaskStatus, ...]:
    """Every status the table allows to move to ``to``, in declaration order."""
    return tuple(s for s in TaskStatus if to in TRANSITIONS[s])


def check(task_id: str, expected: Iterable[str], to: str) -> tuple[TaskStatus, ...]:
    """The statuses ``expected`` as enum members, each allowed by the table to move to ``to``.

    Raises :class:`TransitionError` naming the first one the table forbids: a caller that
    asks for an impossible move is a bug, found before anything is written.
    """
    target = TaskStatus(to)
    allowed = sources(target)
    found: list[TaskStatus] = []
    for raw in expected:
        status = TaskStatus(raw)
        if status not in allowed:
            raise TransitionError(task_id, allowed, status, target)
        found.append(status)
    return tuple(found)
