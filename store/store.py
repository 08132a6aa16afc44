"""The store: one small interface over tasks and the event log.

Every method is synchronous and short; asyncio callers run them in a worker thread. Writes use
``BEGIN IMMEDIATE`` on SQLite so concurrent writers (gateway, supervisor, task processes) queue
on the busy timeout instead of failing on a lock upgrade.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Connection, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine, make_url

from core.options import TaskOptions
from core.status import INITIAL, TaskStatus, TransitionError, check, sources
from core.task import TaskRow
from store.eventlog import TaskLogs
from store.rowwriter import RowWriter
from store.schema import events, metadata, tasks

BUSY_TIMEOUT_MS = 30_000


_options_decoder = msgspec.json.Decoder(dict[str, Any])
_json = msgspec.json.Encoder()


def _row(r: Any) -> TaskRow:
    values = dict(r)
    values["options"] = _options_decoder.decode(values["options"] or "{}")
    values["status"] = TaskStatus(values["status"])
    return TaskRow(**values)


def _engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    if not url.startswith("sqlite"):
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event decide how transactions start (the pysqlite default
        # would defer BEGIN and break BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Store:
    """Tasks and their event log."""

    def __init__(self, url: str, events_dir: Path | None = None) -> None:
        self.url = url
        # Per-task log files when embedded (see store.eventlog); a server keeps one table.
        self._logs = TaskLogs(events_dir) if events_dir and url.startswith("sqlite") else None
        self._write = _engine(url, "BEGIN IMMEDIATE")
        self._read = _engine(url, "BEGIN")
        database = make_url(url).database if url.startswith("sqlite") else None
        # A file database's running-task rows go through plain sqlite3 (see store.rowwriter).
        self._rows = (
            RowWriter(database, BUSY_TIMEOUT_MS) if database not in (None, "", ":memory:") else None
        )

    def create_schema(self) -> None:
        metadata.create_all(self._write)

    def close(self) -> None:
        if self._logs is not None:
            self._logs.close()
        if self._rows is not None:
            self._rows.close()
        self._write.dispose()
        self._read.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._write.begin() as conn:
            yield conn

    # --- tasks ---------------------------------------------------------------------------

    def create_task(
        self, task_id: str, requirement: str, test_mode: bool, options: dict[str, Any], now: str
    ) -> TaskRow:
        TaskOptions.of(options)  # unknown or mistyped options are refused, naming the key
        with self._tx() as c:
            c.execute(
                insert(tasks).values(
                    id=task_id,
                    requirement=requirement,
                    test_mode=test_mode,
                    options=_json.encode(options).decode(),
                    status=INITIAL.value,
                    progress=0.0,
                    created_at=now,
                    created_ns=time.time_ns(),
                    last_event_id=0,
                    state_version=0,
                    run_count=0,
                )
            )
        row = self.get_task(task_id)
        assert row is not None
        return row

    def get_task(self, task_id: str) -> TaskRow | None:
        with self._read.connect() as c:
            r = c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
        return _row(r) if r else None

    def list_tasks(self, limit: int, offset: int) -> tuple[list[TaskRow], int]:
        with self._read.connect() as c:
            rows = c.execute(
                select(tasks).order_by(tasks.c.created_ns.desc()).limit(limit).offset(offset)
            ).mappings()
            found = [_row(r) for r in rows]
            total = c.execute(select(func.count()).select_from(tasks)).scalar_one()
        return found, total

    def tasks_with_status(self, statuses: Iterable[str], node: str | None = None) -> list[TaskRow]:
        """Tasks in the given statuses, oldest first (queue order)."""
        q = select(tasks).where(tasks.c.status.in_(list(statuses)))
        if node is not None:
            q = q.where(tasks.c.node == node)
        q = q.order_by(tasks.c.queued_at, tasks.c.created_ns)
        with self._read.connect() as c:
            return [_row(r) for r in c.execute(q).mappings()]

    def transition(
        self, task_id: str, to: str, expected: Iterable[str] | None = None, **values: Any
    ) -> TaskRow:
        """Move the task to status ``to`` if it is now one of ``expected``; the new row.

        ``expected`` defaults to every status the table (core.status) lets reach ``to``; a
        move the table forbids raises before anything is written, and a row whose status is
        not one of ``expected`` (another writer got there first) raises
        :class:`TransitionError` "expected X, got Y" and is left as it is.
        """
        target = TaskStatus(to)
        allowed = check(task_id, expected if expected is not None else sources(target), target)
        with self._tx() as c:
            res = c.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status.in_([s.value for s in allowed]))
                .values(status=target.value, state_version=tasks.c.state_version + 1, **values)
            )
            r = c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
        if r is None:
            raise KeyError(task_id)
        row = _row(r)
        if res.rowcount == 0:
            raise TransitionError(task_id, allowed, row.status, target)
        return row

    def set_process(self, task_id: str, pid: int | None, create_time: float | None) -> None:
        """Record the task's process (not a state change: the version stays)."""
        with self._tx() as c:
            c.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(pid=pid, pid_create_time=create_time)
            )

    # --- events --------------------------------------------------------------------------

    def open_events(self, task_id: str) -> None:
        """Get the task's event log ready for writing (its file, when embedded)."""
        if self._logs is not None:
            self._logs.open(task_id)

    def append_events(self, task_id: str, batch: Sequence[tuple[int, bytes]]) -> None:
        """Persist a batch of ``(event_id, data_json)`` in one commit."""
        if not batch:
            return
        if self._logs is not None:
            self._logs.append(task_id, batch)
            return
        with self._tx() as c:
            c.execute(
                insert(events),
                [{"task_id": task_id, "event_id": i, "data": d} for i, d in batch],
            )
            c.execute(update(tasks).where(tasks.c.id == task_id).values(last_event_id=batch[-1][0]))

    def save_state(self, task_id: str, columns: Mapping[str, Any]) -> None:
        """Store the running task's own row columns (progress, version, last event id...).

        With per-task log files the row's ``last_event_id`` advances only here, so it may lag
        the log between states; :meth:`last_event_id` is exact.
        """
        if "status" in columns:
            raise ValueError("a status changes only through Store.transition")
        if self._rows is not None:
            self._rows.update(task_id, columns)
            return
        with self._tx() as c:
            c.execute(update(tasks).where(tasks.c.id == task_id).values(**columns))

    def event_dir(self, task_id: str) -> Path | None:
        """The directory of the task's own log file (None: the events live in the database)."""
        return self._logs.task_dir(task_id) if self._logs is not None else None

    def task_outcome(self, task_id: str) -> dict[str, Any]:
        """What the task process recorded about its own end (its word, for its own task only)."""
        if self._logs is not None:
            return self._logs.outcome(task_id)
        row = self.get_task(task_id)
        return {"exit_code": row.exit_code, "error": row.error} if row is not None else {}

    def last_event_id(self, task_id: str) -> int:
        """The id of the task's last persisted event (exact, from the log itself)."""
        if self._logs is not None:
            return self._logs.last_id(task_id)
        with self._read.connect() as c:
            found = c.execute(
                select(func.max(events.c.event_id)).where(events.c.task_id == task_id)
            ).scalar_one_or_none()
        return int(found or 0)

    def read_events(self, task_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` events with ``event_id > after``, in order."""
        if self._logs is not None:
            return self._logs.read(task_id, after, limit)
        with self._read.connect() as c:
            found = c.execute(
                select(events.c.event_id, events.c.data)
                .where(events.c.task_id == task_id, events.c.event_id > after)
                .order_by(events.c.event_id)
                .limit(limit)
            )
            return [(int(i), bytes(d)) for i, d in found]
