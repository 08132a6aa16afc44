"""One SQLite file per task for its event log (the embedded default).

A single shared SQLite database has one write lock: with dozens of tasks committing their own
events it became the bottleneck (writers spent most of their time in ``BEGIN IMMEDIATE``, and
SQLite's busy handler sleeps in growing steps). Each task process is the only writer of its
own file, so its commits never wait; readers (gateways) open the file read-only. A server
database (PostgreSQL) keeps the ``events`` table instead: it has no global write lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from store.readers import Readers

T = TypeVar("T")

_SCHEMA = "CREATE TABLE IF NOT EXISTS events (event_id INTEGER PRIMARY KEY, data BLOB NOT NULL)"
# Each event as the task put it on the bus (MessagePack), so a binary client's replay is a read,
# not a conversion. A table of its own rather than a column of ``events``: a column made every
# row of ``events`` twice as long, so a JSON replay read twice the pages for the same rows
# (+25-45% CPU per row, bench/README.md). Logs from before it have no bodies for their rows;
# those are converted on reading.
_BODIES = "CREATE TABLE IF NOT EXISTS bodies (event_id INTEGER PRIMARY KEY, body BLOB NOT NULL)"
# The task's own record of how it ended (exit code, error, last state version): the
# supervisor reads it, since a task process no longer writes the shared tasks table.
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)"
_LOG_NAME = "events.db"
# With one commit per event, SQLite's automatic checkpoint (every 1000 WAL pages) ran inside
# a commit every ~900 events and stalled that event by ~4 ms: the p99 of the event path.
# Checkpoints run instead on a connection of their own, in a thread, where they overlap the
# writer's commits (PASSIVE never blocks it). Each one still flushes the WAL and the database
# file to disk, and every flush disturbed the event path for ~10 ms (at 2,000 events/s, 5-20
# events 0.5-2 ms late, whatever the flush's size; none on tmpfs). So they are rare: once the
# log has been quiet for CHECKPOINT_IDLE (between an agent's LLM calls, say), or once about
# CHECKPOINT_FRAMES pages (64 MB) have been written since the last one, and at close.
# The checkpoint thread sleeps until then instead of polling: each wake-up of a thread in the
# task process takes the GIL, and a 0.1 s poll showed as late events every 0.1 s.
CHECKPOINT_IDLE = 1.0
CLOSE_WAIT = 10.0  # seconds a checkpoint under way may take before the log closes anyway
CHECKPOINT_FRAMES = 16_384
_PAGE = 4096  # SQLite's default page size: a commit writes at least one page to the WAL
_INSERT_ONE = "INSERT INTO events (event_id, data) VALUES (?, ?)"
_CHUNK = 100  # rows per multi-row INSERT (200 parameters: far below SQLite's limit)
_INSERT_CHUNK = "INSERT INTO events (event_id, data) VALUES " + ", ".join(["(?, ?)"] * _CHUNK)
_INSERT_BODY = "INSERT INTO bodies (event_id, body) VALUES (?, ?)"
_INSERT_BODIES = "INSERT INTO bodies (event_id, body) VALUES " + ", ".join(["(?, ?)"] * _CHUNK)
_READ = "SELECT event_id, data FROM events WHERE event_id > ? ORDER BY event_id LIMIT ?"
_READ_BODIES = "SELECT event_id, body FROM bodies WHERE event_id > ? ORDER BY event_id LIMIT ?"
_LAST_ID = "SELECT max(event_id) FROM events"
_READ_IDS = "SELECT event_id FROM events WHERE event_id > ? ORDER BY event_id LIMIT ?"
_READ_SOME = (
    "SELECT event_id, data FROM events WHERE event_id > ? AND event_id <= ? ORDER BY event_id"
)


def checkpoint_due(pages: int, quiet: float) -> bool:
    """Whether to checkpoint, given WAL pages written since the last one and seconds quiet."""
    return pages > 0 and (quiet >= CHECKPOINT_IDLE or pages >= CHECKPOINT_FRAMES)


class _Written:
    """What a log's writer wrote, and what its checkpoint thread has checkpointed."""

    __slots__ = ("at", "done", "kick", "pages")

    def __init__(self) -> None:
        # Each field has one writer thread, so no lock: a stale read only delays a checkpoint.
        self.pages = 0  # WAL pages written, estimated: one per commit plus the data's size
        self.at = 0.0  # monotonic time of the last commit
        self.done = 0  # ``pages`` at the last checkpoint (the checkpoint thread's)
        self.kick = threading.Event()  # wakes the checkpoint thread

    def wrote(self, batch: Sequence[tuple[int, bytes]], bodies: Sequence[bytes] | None) -> None:
        """Count a commit; wake the checkpoint thread if it has something new to wait for."""
        before = self.pages
        size = sum(len(d) for _, d in batch) + (sum(map(len, bodies)) if bodies else 0)
        self.pages = before + 1 + size // _PAGE
        self.at = time.monotonic()
        # The first commit since a checkpoint starts the quiet timer; a large WAL is due now.
        if before == self.done or self.pages - self.done >= CHECKPOINT_FRAMES:
            self.kick.set()


class EventLogUnreadable(sqlite3.DatabaseError):
    """A task's event log file cannot be read (damaged, or not a log at all)."""

    def __init__(self, task_id: str, why: object) -> None:
        super().__init__(f"the event log of task {task_id} is unreadable: {why}")
        self.task_id = task_id


class TaskLogs:
    """Per-task event log files under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writers: dict[str, sqlite3.Connection] = {}
        self._written: dict[str, _Written] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._readers = Readers()
        self._checkpointers: list[threading.Thread] = []

    def task_dir(self, task_id: str) -> Path:
        """The directory of one task's log: the task may write there and nowhere else here."""
        return self.directory / task_id

    def path(self, task_id: str) -> Path:
        legacy = self.directory / f"{task_id}.db"  # the layout before per-task directories
        if legacy.exists():
            return legacy
        return self.task_dir(task_id) / _LOG_NAME

    def _writer(self, task_id: str) -> sqlite3.Connection:
        with self._lock:
            conn = self._writers.get(task_id)
            if conn is None:
                self.path(task_id).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path(task_id), isolation_level=None, check_same_thread=False, timeout=30
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute(_SCHEMA)
                conn.execute(_BODIES)  # (added to a log from before bodies were stored)
                conn.execute(_META)
                self._writers[task_id] = conn
                self._written[task_id] = _Written()
                thread = threading.Thread(
                    target=self._checkpoints, args=(task_id,), name="checkpoint", daemon=True
                )
                thread.start()
                self._checkpointers.append(thread)
            return conn

    def open(self, task_id: str) -> None:
        """Create the task's log file and its writer now (idempotent)."""
        self._writer(task_id)

    def _checkpoints(self, task_id: str) -> None:
        written = self._written[task_id]
        conn = sqlite3.connect(self.path(task_id), isolation_level=None, timeout=30)
        try:
            while not self._closed.is_set():
                written.kick.clear()  # before looking: a kick from now on is not lost
                pages = written.pages
                quiet = time.monotonic() - written.at
                if checkpoint_due(pages - written.done, quiet):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    written.done = pages
                    continue
                # Until the log could be quiet long enough; with nothing new, until a commit.
                written.kick.wait(CHECKPOINT_IDLE - quiet if pages > written.done else None)
        except sqlite3.Error:
            pass  # the writer reports real problems; a missed checkpoint only grows the WAL
        finally:
            conn.close()

    def append(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        """Commit a batch of ``(event_id, data)``, with their bus bodies if given; ids new."""
        conn = self._writer(task_id)
        if bodies is not None and len(bodies) != len(batch):
            raise ValueError(f"{len(batch)} events but {len(bodies)} bodies")
        conn.execute("BEGIN IMMEDIATE")
        try:
            _insert(conn, _INSERT_CHUNK, _INSERT_ONE, batch)
            if bodies is not None:
                _insert(conn, _INSERT_BODIES, _INSERT_BODY, [
                    (i, b) for (i, _), b in zip(batch, bodies, strict=True)
                ])  # fmt: skip
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._written[task_id].wrote(batch, bodies)

    def record(self, task_id: str, values: dict[str, object]) -> None:
        """Store the task's own outcome fields (``exit_code``, ``error``, ``state_version``)."""
        self._writer(task_id)  # the file and its tables exist
        # A connection of its own: the writer's belongs to the event-writing threads.
        conn = sqlite3.connect(self.path(task_id), isolation_level=None, timeout=30)
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, _meta_json.encode(v)) for k, v in values.items()],
            )
        finally:
            conn.close()

    def outcome(self, task_id: str) -> dict[str, object]:
        """What the task recorded with :meth:`record` (untrusted: it is the task's word)."""
        try:
            rows = self._readers.read(
                self.path(task_id), lambda c: c.execute("SELECT key, value FROM meta").fetchall()
            )
        except sqlite3.Error:
            return {}  # no meta table (an old or a damaged log): nothing recorded
        found: dict[str, object] = {}
        for key, value in rows or ():
            try:
                found[str(key)] = _meta_json.decode(value)
            except (msgspec.DecodeError, TypeError):
                continue  # a hostile task's garbage: ignored
        return found

    def read(self, task_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` events with ``event_id > after``, in order: ``(event_id, data)``.

        Raises :class:`EventLogUnreadable` for a damaged log (never "no events": that would
        lose them). The file is written by the (untrusted) task: whatever it holds, the reader
        gets rows of the right types or that error, affecting that task's stream only.
        """
        return self._select(task_id, lambda c: _rows(c, _READ, (after, limit)))

    def read_bodies(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bytes | None, bytes | None]]:
        """As :meth:`read`, for binary clients: ``(event_id, body, None)`` per event, or
        ``(event_id, None, data)`` for one logged without its body (before bodies were).

        The events' ids decide which events there are; a body is the task's own word, as its
        live bus bodies are: forwarded to that task's binary clients as it is, never decoded
        or believed here.
        """

        def select(c: sqlite3.Connection) -> list[tuple[int, bytes | None, bytes | None]]:
            # One read transaction: the task commits each event and its body together while
            # this reads, and two autocommit SELECTs saw two states of the log (bodies of
            # events committed between them: the stream ended with an IndexError).
            c.execute("BEGIN")
            try:
                return bodies_of(c)
            finally:
                c.rollback()

        def bodies_of(c: sqlite3.Connection) -> list[tuple[int, bytes | None, bytes | None]]:
            try:
                found = _rows(c, _READ_BODIES, (after, limit))
            except sqlite3.OperationalError as exc:
                if not _not_created(exc):
                    raise
                found = []  # a log from before bodies were stored
            n = len(found)
            # Bodies for every id from ``after`` on, up to the limit or the log's last event:
            # no event can lack one, and the ids need no read of their own (~1 us a row).
            consecutive = n and found[0][0] == after + 1 and found[-1][0] == after + n
            if consecutive and (n == limit or c.execute(_LAST_ID).fetchall() == [(after + n,)]):
                return [(i, b, None) for i, b in found]
            ids = [r[0] for r in c.execute(_READ_IDS, (after, limit)).fetchall()]
            if [i for i, _ in found] == ids:  # every event has its body: the common case
                return [(i, b, None) for i, b in found]
            bodies = dict(found)
            missing = [i for i in ids if i not in bodies]
            if not missing:  # bodies beyond the events read (their page ends first)
                return [(i, bodies[i], None) for i in ids]
            datas = dict(_rows(c, _READ_SOME, (missing[0] - 1, missing[-1])))
            return [(i, bodies[i], None) if i in bodies else (i, None, datas[i]) for i in ids]

        return self._select(task_id, select)

    def _select(self, task_id: str, query: Callable[[sqlite3.Connection], list[T]]) -> list[T]:
        try:
            return self._readers.read(self.path(task_id), query) or []
        except sqlite3.OperationalError as exc:
            if _not_created(exc):
                return []  # the file exists but its table is not committed: nothing logged
            raise EventLogUnreadable(task_id, exc) from exc
        except sqlite3.DatabaseError as exc:
            raise EventLogUnreadable(task_id, exc) from exc
        except (TypeError, KeyError) as exc:  # (KeyError: an id that vanished between reads)
            raise EventLogUnreadable(task_id, "rows of the wrong types") from exc

    def last_id(self, task_id: str) -> int:
        try:
            rows = self._readers.read(
                self.path(task_id),
                lambda c: c.execute(_LAST_ID).fetchall(),
            )
        except sqlite3.OperationalError as exc:
            if _not_created(exc):
                return 0
            raise EventLogUnreadable(task_id, exc) from exc
        except sqlite3.DatabaseError as exc:
            raise EventLogUnreadable(task_id, exc) from exc
        top = rows[0][0] if rows else None
        if top is not None and type(top) is not int:
            raise EventLogUnreadable(task_id, "an event id that is not an integer")
        return int(top or 0)

    def close(self) -> None:
        self._closed.set()
        for written in self._written.values():
            written.kick.set()
        # Their checkpoints first: one still running makes the closing TRUNCATE fail (busy),
        # and the WAL left behind costs every later reader (store/readers.py).
        for thread in self._checkpointers:
            thread.join(CLOSE_WAIT)
        self._readers.close()
        with self._lock:
            for conn in self._writers.values():
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
            self._writers.clear()


_meta_json = msgspec.json  # module: encode/decode
_first, _second = itemgetter(0), itemgetter(1)


def _insert(conn: sqlite3.Connection, chunk_sql: str, one_sql: str, rows: Sequence[Any]) -> None:
    """Rows of two values: full chunks as multi-row INSERTs (a third cheaper per row than
    executemany), the rest one by one."""
    full = len(rows) - len(rows) % _CHUNK
    for start in range(0, full, _CHUNK):
        conn.execute(chunk_sql, [v for row in rows[start : start + _CHUNK] for v in row])
    if full < len(rows):
        conn.executemany(one_sql, rows[full:])


def _rows(conn: sqlite3.Connection, sql: str, args: tuple[int, ...]) -> list[tuple[int, bytes]]:
    """``(id, blob)`` rows, checked: the task wrote the file, whatever it holds."""
    rows = conn.execute(sql, args).fetchall()
    # Column by column in C (a generator over the rows cost ~0.2 us a row of a replay).
    if rows and (
        set(map(type, map(_first, rows))) != {int} or set(map(type, map(_second, rows))) != {bytes}
    ):
        raise TypeError("rows of the wrong types")
    return rows


def _not_created(exc: sqlite3.OperationalError) -> bool:
    return "no such table" in str(exc)
