"""A running task's own row updates on embedded SQLite, without SQLAlchemy's execution path.

A task process updates its row (progress, last message, version) every state interval from a
thread of its own. Through SQLAlchemy that update costs ~140 us of Python per write, nearly all
of it holding the GIL; at 2,000 events/s each write delayed the next one or two events by
0.4-1 ms, a cluster of late events at every write. The same UPDATE on a plain ``sqlite3``
connection runs in C with the GIL released, and the clusters are gone.
Server databases keep the SQLAlchemy path (see :meth:`store.Store.save_state`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from store.schema import tasks

_COLUMNS = frozenset(tasks.c.keys()) - {"id"}


class RowWriter:
    """Updates columns of task rows in one SQLite file; safe to call from any thread."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._path = path
        self._timeout = busy_timeout_ms / 1000
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._sql: dict[tuple[str, ...], str] = {}

    def update(self, task_id: str, columns: Mapping[str, Any]) -> None:
        """``UPDATE tasks SET ... WHERE id = task_id`` in one ``BEGIN IMMEDIATE`` transaction."""
        names = tuple(sorted(columns))
        sql = self._sql.get(names)
        if sql is None:
            unknown = set(names) - _COLUMNS
            if unknown or not names:
                raise ValueError(f"expected columns of tasks, got {sorted(unknown) or 'none'}")
            sql = self._sql[names] = (
                f"UPDATE tasks SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?"
            )
        params = [columns[n] for n in names]
        params.append(task_id)
        with self._lock:
            conn = self._connect()
            # BEGIN IMMEDIATE like every other writer: queue on the busy timeout, never fail
            # on a lock upgrade.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, params)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=self._timeout
            )
            conn.execute("PRAGMA synchronous=NORMAL")  # as the engine's connections (WAL)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
