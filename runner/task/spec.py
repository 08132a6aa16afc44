"""What the supervisor tells a task process about its task, and the task's own log.

A task process reads no shared database: the supervisor writes this spec into the task's
private directory before starting it, and the task writes only its own event-log file.
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

    def append_events(self, task_id: str, batch: Sequence[tuple[int, bytes]]) -> None:
        self._logs.append(task_id, batch)

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

    Outside the boundary this page is about: the task process then holds the database's
    credentials (docs/security.md "Not covered yet"). It still writes only its events and its
    own outcome columns.
    """

    def __init__(self, url: str, events_dir: Path, epoch: int | None = None) -> None:
        from store import Store

        # Two connections at most: the event writer and the outcome writer (README: sizing).
        self._store = Store(url, events_dir, pool_size=2, max_overflow=0, epoch=epoch)

    @property
    def local_commits(self) -> bool:
        return self._store.local_commits

    def open_events(self, task_id: str) -> None:
        self._store.open_events(task_id)

    def append_events(self, task_id: str, batch: Sequence[tuple[int, bytes]]) -> None:
        self._store.append_events(task_id, batch)

    def last_event_id(self, task_id: str) -> int:
        return self._store.last_event_id(task_id)

    def save_state(self, task_id: str, columns: Mapping[str, Any]) -> None:
        kept = {k: columns[k] for k in ("exit_code", "error") if k in columns}
        if kept:
            self._store.save_state(task_id, kept)

    def close(self) -> None:
        self._store.close()
