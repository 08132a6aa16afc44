"""What the supervisor tells a task process about its task, and the task's own log.

A task process reads no shared database: the supervisor writes this spec into the task's
private directory before starting it, and the task writes only its own event-log file (or,
on PostgreSQL, its own rows, as a database role of its own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from bus.messages import State
from store.eventlog import TaskLogs

SPEC_ENV = "METASTREAM_TASK_SPEC"  # path of the spec file
# The task's own record of its end, kept in its log (see TaskLogs.record).
OUTCOME_KEYS = ("exit_code", "error", "state_version")


class TaskSpec(msgspec.Struct, kw_only=True):
    """The task as its process needs it."""

    requirement: str
    test_mode: bool
    options: dict[str, Any]
    last_event_id: int
    state: State
    test_hooks: bool = False  # the supervisor allows test code in this task (tests only)
    # This run of the conversation, from the run row the supervisor wrote (the task reads no
    # runs table): its number, its kind (start, retry, follow_up, resume) and its requirement
    # (a follow-up's own words; ``requirement`` above stays the task's first one).
    run_no: int = 1
    run_kind: str = "start"
    run_requirement: str = ""
    # A server database: the URL of this task's own role (store.taskroles), never the
    # stack's. Here, in its private file, not in its environment (which a process forked from
    # the same zygote, or a crash report, might show). Empty: its own SQLite log file.
    db_url: str = ""
    # The run's fencing epoch on PostgreSQL (several nodes): the database refuses this
    # process's writes once its run is taken over. None on SQLite (one node).
    epoch: int | None = None


def write(path: Path, spec: TaskSpec) -> None:
    path.write_bytes(msgspec.json.encode(spec))


def read(path: Path) -> TaskSpec:
    return msgspec.json.decode(path.read_bytes(), type=TaskSpec)


class OwnLog:
    """The task's side of the store: its own event log file, nothing else.

    ``save_state`` (the outbox's row writer) keeps only what the supervisor reads back about
    this task's end; progress reaches the tasks table through the supervisor, from the bus.
    """

    local_commits = True  # a local SQLite file: the outbox's emitters commit their batches

    def __init__(self, events_dir: Path) -> None:
        self._logs = TaskLogs(events_dir)

    def open_events(self, task_id: str) -> None:
        self._logs.open(task_id)

    def append_events(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        self._logs.append(task_id, batch, bodies)

    def last_event_id(self, task_id: str) -> int:
        return self._logs.last_id(task_id)

    def save_state(self, task_id: str, columns: Mapping[str, Any]) -> None:
        kept = {k: columns[k] for k in OUTCOME_KEYS if k in columns}
        if kept:
            self._logs.record(task_id, kept)

    def close(self) -> None:
        self._logs.close()


class SharedLog:
    """With a server database (PostgreSQL) the events live in its shared table.

    The task connects as its own role (store.taskroles): its rows of ``events`` and
    ``task_meta`` only, by row-level security. Its outcome goes into ``task_meta``, like
    :class:`OwnLog`'s ``meta`` table; the tasks table is the supervisor's.
    """

    local_commits = False

    def __init__(self, url: str, epoch: int | None = None) -> None:
        from store.pgtask import TaskRows

        self._rows = TaskRows(url, epoch)

    def open_events(self, task_id: str) -> None:
        self._rows.open_events(task_id)

    def append_events(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        self._rows.append_events(task_id, batch, bodies)

    def last_event_id(self, task_id: str) -> int:
        return self._rows.last_event_id(task_id)

    def save_state(self, task_id: str, columns: Mapping[str, Any]) -> None:
        kept = {k: columns[k] for k in OUTCOME_KEYS if k in columns}
        if kept:
            self._rows.record(task_id, kept)

    def close(self) -> None:
        self._rows.close()
