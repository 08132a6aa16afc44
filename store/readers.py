"""Read-only connections to task log files, kept open between reads.

A replay reads a log a block at a time, and opening a connection for each block cost more
than it seems: ~1 ms to open it (0.5 us per row of a 2,000-row block), and far more when the
task left a write-ahead log behind (killed, or its closing checkpoint lost a race): with no
connection open on the file, each new one rebuilds the WAL's index by reading the whole WAL,
~50 ms for 90 MB, for every block (measured: 12-16 us per replayed row instead of 2).
A connection kept open keeps the index, so the last few logs read keep theirs.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
KEEP = 16  # open logs kept (three file descriptors each: the file, its WAL and its index)


class _Open:
    """One open connection; ``closed`` once evicted (a reader that got it just before must
    not use it: it takes another)."""

    __slots__ = ("closed", "conn", "lock")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self.lock:  # (after a read under way on it)
            self.closed = True
            self.conn.close()


class Readers:
    """Up to ``keep`` open read-only connections, least recently used closed first.

    Any thread may read through one; a lock per connection keeps it to one at a time.
    """

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._open: collections.OrderedDict[Path, _Open] = collections.OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: Path, query: Callable[[sqlite3.Connection], T]) -> T | None:
        """``query`` run on the file's connection; None if the file does not exist.

        A connection whose read raised a database error is closed (the next read opens the
        file again: it may have been repaired or replaced); the error is raised.
        """
        with self._using(path) as conn:
            if conn is None:
                return None
            return query(conn)

    @contextlib.contextmanager
    def _using(self, path: Path) -> Iterator[sqlite3.Connection | None]:
        while True:
            entry = self._get(path)
            if entry is None:
                yield None
                return
            with entry.lock:
                if entry.closed:
                    continue  # evicted between finding it and locking it: open it again
                try:
                    yield entry.conn
                except sqlite3.Error:
                    self._drop(path, entry)
                    raise
                return

    def _get(self, path: Path) -> _Open | None:
        with self._lock:
            entry = self._open.get(path)
            if entry is not None:
                self._open.move_to_end(path)
                return entry
        if not path.exists():
            return None
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )
        with self._lock:
            if path in self._open:  # another thread opened it meanwhile: use that one
                conn.close()
                return self._open[path]
            entry = self._open[path] = _Open(conn)
            old = [self._open.popitem(last=False)[1] for _ in range(len(self._open) - self.keep)]
        for other in old:
            other.close()
        return entry

    def _drop(self, path: Path, entry: _Open) -> None:
        """Close a connection whose read failed (its caller holds its lock)."""
        with self._lock:
            if self._open.get(path) is entry:
                del self._open[path]
        entry.closed = True
        entry.conn.close()

    def close(self) -> None:
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
        for entry in entries:
            entry.close()
