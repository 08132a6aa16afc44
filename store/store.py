"""The store: one small interface over tasks and the event log, on SQLite or PostgreSQL.

Every method is synchronous and short; asyncio callers run them in a worker thread. Writes use
``BEGIN IMMEDIATE`` on SQLite so concurrent writers (gateway, supervisor, task processes) queue
on the busy timeout instead of failing on a lock upgrade. On PostgreSQL (see :mod:`store.pg`)
pools are bounded, statements time out, and calls are retried while the server is away.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Connection, case, create_engine, event, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from core.options import TaskOptions
from core.status import INITIAL, Fenced, TaskStatus, TransitionError, check, sources
from core.task import TaskRow
from store import migrate, pg
from store.checked import checked_bodies, checked_json
from store.dburl import StoreError, is_sqlite, redact, scrub
from store.eventlog import TaskLogs
from store.files import TaskFiles
from store.nodes import Nodes
from store.rowwriter import RowWriter
from store.runs import Runs
from store.schema import events, task_meta, tasks
from store.taskroles import TaskRoles

T = TypeVar("T")

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


# The outcome fields a task records about itself (store.pgtask, store.eventlog).
OUTCOME_KEYS = ("exit_code", "error", "state_version")


class Store:
    """Tasks and their event log."""

    def __init__(
        self,
        url: str,
        events_dir: Path | None = None,
        *,
        pool_size: int = 5,
        max_overflow: int = 5,
        migrate: bool = True,
        epoch: int | None = None,
    ) -> None:
        """Nothing connects yet; :meth:`create_schema` checks the database at start-up.

        ``pool_size`` and ``max_overflow`` bound the connections a process holds on a server
        database (a task process needs two: its event writer and its row writer).
        """
        self.url = url
        self._migrate = migrate
        self._sqlite = is_sqlite(url)
        # Per-task log files when embedded (see store.eventlog); a server keeps one table.
        self._logs = TaskLogs(events_dir) if events_dir and self._sqlite else None
        self._table: pg.EventTable | None = None
        self._rows: RowWriter | None = None
        if self._sqlite:
            self._write = _engine(url, "BEGIN IMMEDIATE")
            self._read = _engine(url, "BEGIN")
            database = make_url(url).database
            # A file database's running-task rows go through plain sqlite3 (store.rowwriter).
            if database not in (None, "", ":memory:"):
                self._rows = RowWriter(database, BUSY_TIMEOUT_MS)
        else:
            # One engine: PostgreSQL needs no separate writer to order its transactions.
            self._write = self._read = pg.make_engine(url, pool_size, max_overflow, epoch)
            self._table = pg.EventTable(self._write, url)
        self.runs = Runs(self._write, self._read)  # a task's runs (follow-ups, resumes)

    @property
    def nodes(self) -> Nodes | None:
        """Node rows and claims (several nodes share a PostgreSQL database); None on SQLite."""
        return None if self._sqlite else Nodes(self._write)

    @property
    def files(self) -> TaskFiles | None:
        """Tasks' generated files for other nodes' gateways (PostgreSQL only)."""
        return None if self._sqlite else TaskFiles(self._write)

    @property
    def local_commits(self) -> bool:
        """Whether a commit is local and cheap (embedded SQLite), not a server round trip."""
        return self._sqlite

    def create_schema(self) -> str | None:
        """Check the database at start-up and bring its schema up to date (store.migrate).

        Returns the revision it migrated from ("nothing" for an empty database), if it did.
        Raises :class:`StoreError` (one line, no password) when the database cannot be
        reached or its schema cannot be used.
        """
        try:
            return migrate.ensure_schema(self._write, self.url, migrate=self._migrate)
        except sa_exc.DBAPIError as exc:
            raise self.unavailable(exc) from None

    def upgrade_schema(self) -> str | None:
        """Migrate to the newest schema (``metastream db upgrade``); the revision it left."""
        try:
            return migrate.upgrade(self._write, self.url)
        except sa_exc.DBAPIError as exc:
            raise self.unavailable(exc) from None

    def schema_version(self) -> str | None:
        """The database's schema revision (None when empty)."""
        try:
            with self._read.connect() as c:
                return migrate.current(c)
        except sa_exc.DBAPIError as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: BaseException) -> StoreError:
        """A one-line error for ``exc``, naming the database without its password."""
        orig = getattr(exc, "orig", None) or exc
        return StoreError(
            f"cannot use the database {redact(self.url)}: {scrub(str(orig), self.url)}"
        )

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn()``; on PostgreSQL, again with backoff while the server is unreachable."""
        return fn() if self._sqlite else pg.retrying(self.url, fn)

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

    def _in_tx(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in one write transaction (retried as a whole on PostgreSQL)."""

        def once() -> T:
            with self._tx() as c:
                return fn(c)

        return self._retry(once)

    def _reading(self, fn: Callable[[Connection], T]) -> T:
        def once() -> T:
            with self._read.connect() as c:
                return fn(c)

        return self._retry(once)

    # --- tasks ---------------------------------------------------------------------------

    def create_task(
        self, task_id: str, requirement: str, test_mode: bool, options: dict[str, Any], now: str
    ) -> TaskRow:
        TaskOptions.of(options)  # unknown or mistyped options are refused, naming the key
        values = {
            "id": task_id,
            "requirement": requirement,
            "test_mode": test_mode,
            "options": _json.encode(options).decode(),
            "status": INITIAL.value,
            "progress": 0.0,
            "created_at": now,
            "created_ns": time.time_ns(),
            "last_event_id": 0,
            "state_version": 0,
            "run_count": 0,
        }
        self._in_tx(lambda c: c.execute(insert(tasks).values(**values)))
        row = self.get_task(task_id)
        assert row is not None
        return row

    def get_task(self, task_id: str) -> TaskRow | None:
        r = self._reading(
            lambda c: c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
        )
        return _row(r) if r else None

    def list_tasks(self, limit: int, offset: int) -> tuple[list[TaskRow], int]:
        def read(c: Connection) -> tuple[list[TaskRow], int]:
            rows = c.execute(
                select(tasks).order_by(tasks.c.created_ns.desc()).limit(limit).offset(offset)
            ).mappings()
            found = [_row(r) for r in rows]
            return found, c.execute(select(func.count()).select_from(tasks)).scalar_one()

        return self._reading(read)

    def ping(self) -> None:
        """Raise unless the database answers (readiness checks)."""
        with self._read.connect() as c:
            c.execute(select(1)).scalar_one()

    def status_counts(self) -> list[tuple[str, str | None, int]]:
        """How many tasks are in each (status, node) (metrics)."""
        q = select(tasks.c.status, tasks.c.node, func.count()).group_by(
            tasks.c.status, tasks.c.node
        )
        return self._reading(lambda c: [(st, node, int(n)) for st, node, n in c.execute(q)])

    def tasks_with_status(self, statuses: Iterable[str], node: str | None = None) -> list[TaskRow]:
        """Tasks in the given statuses, oldest first (queue order)."""
        q = select(tasks).where(tasks.c.status.in_(list(statuses)))
        if node is not None:
            q = q.where(tasks.c.node == node)
        q = q.order_by(tasks.c.queued_at, tasks.c.created_ns)
        return self._reading(lambda c: [_row(r) for r in c.execute(q).mappings()])

    def transition(
        self,
        task_id: str,
        to: str,
        expected: Iterable[str] | None = None,
        *,
        at_epoch: int | None = None,
        **values: Any,
    ) -> TaskRow:
        """Move the task to status ``to`` if it is now one of ``expected``; the new row.

        ``expected`` defaults to every status the table (core.status) lets reach ``to``; a
        move the table forbids raises before anything is written, and a row whose status is
        not one of ``expected`` (another writer got there first) raises
        :class:`TransitionError` "expected X, got Y" and is left as it is. With ``at_epoch``
        the row must also still be at that run epoch (a run taken over is fenced off).
        """
        target = TaskStatus(to)
        allowed = check(task_id, expected if expected is not None else sources(target), target)

        def change(c: Connection) -> tuple[int, Any]:
            where = [tasks.c.id == task_id, tasks.c.status.in_([s.value for s in allowed])]
            if at_epoch is not None:
                where.append(tasks.c.epoch == at_epoch)
            res = c.execute(
                update(tasks)
                .where(*where)
                .values(status=target.value, state_version=tasks.c.state_version + 1, **values)
            )
            r = c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
            return res.rowcount, r

        changed, r = self._in_tx(change)
        if r is None:
            raise KeyError(task_id)
        row = _row(r)
        if changed == 0:
            if at_epoch is not None and row.status in allowed and row.epoch != at_epoch:
                raise Fenced(task_id, row.status, target, at_epoch, row.epoch)
            raise TransitionError(task_id, allowed, row.status, target)
        return row

    def set_process(self, task_id: str, pid: int | None, create_time: float | None) -> None:
        """Record the task's process (not a state change: the version stays)."""
        self._in_tx(
            lambda c: c.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(pid=pid, pid_create_time=create_time)
            )
        )

    # --- events --------------------------------------------------------------------------

    def open_events(self, task_id: str) -> None:
        """Get the task's event log ready for writing (its file, when embedded)."""
        if self._logs is not None:
            self._logs.open(task_id)

    def append_events(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        """Persist a batch of ``(event_id, data_json)`` in one commit (and their bus bodies)."""
        if not batch:
            return
        if self._logs is not None:
            self._logs.append(task_id, batch, bodies)
        elif self._table is not None:
            self._table.append(task_id, batch, bodies)
        else:  # an embedded database without log files (:memory:, tests)
            with_bodies = bodies if bodies is not None else [None] * len(batch)

            def add(c: Connection) -> None:
                rows = [
                    {"task_id": task_id, "event_id": i, "data": d, "body": b}
                    for (i, d), b in zip(batch, with_bodies, strict=True)
                ]
                c.execute(insert(events), rows)
                c.execute(
                    update(tasks).where(tasks.c.id == task_id).values(last_event_id=batch[-1][0])
                )

            self._in_tx(add)

    def save_state(
        self, task_id: str, columns: Mapping[str, Any], at_epoch: int | None = None
    ) -> None:
        """Store the running task's own row columns (progress, version, last event id...).

        The row's ``last_event_id`` advances only here, so it may lag the log between states;
        :meth:`last_event_id` is exact.
        """
        if "status" in columns:
            raise ValueError("a status changes only through Store.transition")
        if self._rows is not None:
            self._rows.update(task_id, columns)
            return
        where = [tasks.c.id == task_id]
        if at_epoch is not None:  # a run taken over writes nothing more
            where.append(tasks.c.epoch == at_epoch)
        self._in_tx(lambda c: c.execute(update(tasks).where(*where).values(**columns)))

    def event_dir(self, task_id: str) -> Path | None:
        """The directory of the task's own log file (None: the events live in the database)."""
        return self._logs.task_dir(task_id) if self._logs is not None else None

    def task_outcome(self, task_id: str) -> dict[str, Any]:
        """What the task process recorded about its own end (its word, for its own task only)."""
        if self._logs is not None:
            return self._logs.outcome(task_id)
        if not self._sqlite:  # its task_meta rows (store.pgtask)
            rows = self._reading(
                lambda c: c.execute(
                    select(task_meta.c.key, task_meta.c.value).where(
                        task_meta.c.task_id == task_id,
                        # A task may write any number of rows of its own: read only these.
                        task_meta.c.key.in_(OUTCOME_KEYS),
                    )
                ).all()
            )
            found: dict[str, Any] = {}
            for key, value in rows:
                try:
                    found[str(key)] = msgspec.json.decode(value)
                except (msgspec.DecodeError, TypeError):
                    continue  # a hostile task's garbage: ignored
            if found:
                return found
        # A task of an older version wrote its own row (or an embedded database, in tests).
        row = self.get_task(task_id)
        return {"exit_code": row.exit_code, "error": row.error} if row is not None else {}

    def task_roles(self) -> TaskRoles | None:
        """The per-task database roles (PostgreSQL only; the supervisor's to use)."""
        return None if self._sqlite else TaskRoles(self._write, self.url)

    def last_event_id(self, task_id: str) -> int:
        """The id of the task's last persisted event (exact, from the log itself)."""
        if self._logs is not None:
            return self._logs.last_id(task_id)
        found = self._reading(
            lambda c: c.execute(
                select(func.max(events.c.event_id)).where(events.c.task_id == task_id)
            ).scalar_one_or_none()
        )
        return int(found or 0)

    def read_event_bodies(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bytes | None, bytes | None]]:
        """As :meth:`read_events` for binary clients: ``(event_id, body, None)``, or
        ``(event_id, None, data)`` for an event logged without its bus body (an older log)."""
        return checked_bodies(task_id, self._read_event_bodies(task_id, after, limit))

    def _read_event_bodies(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bytes | None, bytes | None]]:
        if self._logs is not None:
            return self._logs.read_bodies(task_id, after, limit)
        c = events.c
        return self._reading(
            lambda conn: [
                (int(i), None if b is None else bytes(b), None if d is None else bytes(d))
                for i, b, d in conn.execute(
                    select(c.event_id, c.body, case((c.body.is_(None), c.data)))
                    .where(c.task_id == task_id, c.event_id > after)
                    .order_by(c.event_id)
                    .limit(limit)
                )
            ]
        )

    def read_events(self, task_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` events with ``event_id > after``, in order, each checked to be its
        event's JSON object (``store.checked``: the task wrote them): fewer if a row fails,
        :class:`EventLogUnreadable` if the first does."""
        return checked_json(task_id, self._read_events(task_id, after, limit))

    def _read_events(self, task_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        if self._logs is not None:
            return self._logs.read(task_id, after, limit)
        return self._reading(
            lambda c: [
                (int(i), bytes(d))
                for i, d in c.execute(
                    select(events.c.event_id, events.c.data)
                    .where(events.c.task_id == task_id, events.c.event_id > after)
                    .order_by(events.c.event_id)
                    .limit(limit)
                )
            ]
        )
