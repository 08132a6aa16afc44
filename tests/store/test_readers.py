"""Read-only log connections kept open between reads, over real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from store.eventlog import TaskLogs
from store.readers import Readers

pytestmark = pytest.mark.timeout(60)
DATA = b'{"x":1}'


def _db(path: Path, rows: int = 1) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def _count(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT count(*) FROM t").fetchall()[0][0])


def test_a_connection_is_kept_and_the_least_recently_used_closed(tmp_path: Path) -> None:
    readers = Readers(keep=2)
    a, b, c = (_db(tmp_path / f"{n}.db", rows) for n, rows in (("a", 1), ("b", 2), ("c", 3)))
    try:
        first = readers.read(a, lambda conn: conn)
        assert readers.read(a, lambda conn: conn) is first  # the same connection again
        assert [readers.read(p, _count) for p in (b, a, c)] == [2, 1, 3]  # b: least recent
        assert readers.read(a, lambda conn: conn) is first  # kept
        assert list(readers._open) == [c, a]
        assert readers.read(tmp_path / "none.db", _count) is None  # no file: nothing opened
        assert not (tmp_path / "none.db").exists()
    finally:
        readers.close()
    with pytest.raises(sqlite3.ProgrammingError):
        _count(first)  # closed with the rest


def test_a_connection_whose_read_failed_is_opened_again(tmp_path: Path) -> None:
    readers = Readers()
    path = tmp_path / "x.db"
    path.write_bytes(b"this is not a database" * 100)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            readers.read(path, _count)
        assert path not in readers._open
        path.unlink()
        _db(path, 4)  # a real file now (a task may repair its own)
        assert readers.read(path, _count) == 4
    finally:
        readers.close()


def test_threads_share_a_connection_one_read_at_a_time(tmp_path: Path) -> None:
    readers = Readers()
    path = _db(tmp_path / "x.db", 1000)
    inside, overlaps, results = [0], [0], []
    lock = threading.Lock()

    def query(c: sqlite3.Connection) -> int:
        with lock:
            inside[0] += 1
            overlaps[0] = max(overlaps[0], inside[0])
        try:
            return sum(i for (i,) in c.execute("SELECT i FROM t").fetchall())
        finally:
            with lock:
                inside[0] -= 1

    def worker() -> None:
        for _ in range(50):
            results.append(readers.read(path, query))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        readers.close()
    assert results == [sum(range(1000))] * 200
    assert overlaps[0] == 1


def test_a_closed_log_leaves_no_write_ahead_log(tmp_path: Path) -> None:
    """Later readers open the file without rebuilding a WAL index (the checkpoint thread is
    joined first: one still running made the closing TRUNCATE fail, silently)."""
    logs = TaskLogs(tmp_path)
    logs.append("t", [(i, DATA) for i in range(1, 2001)])
    assert logs.read("t", 1999, 10) == [(2000, DATA)]  # a reader connection open too
    logs.close()
    wal = logs.path("t").with_name("events.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    again = TaskLogs(tmp_path)
    try:
        assert again.read("t", 1999, 10) == [(2000, DATA)]
    finally:
        again.close()


def test_a_connection_evicted_before_its_reader_locked_it_is_not_used(tmp_path: Path) -> None:
    """The race 50 tasks' catch-ups hit (the curves' connections closed with 1011): a reader
    found a connection, another thread evicted and closed it, then the first used it."""
    readers = Readers(keep=1)
    a, b = _db(tmp_path / "a.db", 1), _db(tmp_path / "b.db", 2)
    try:
        found = readers._get(a)  # found, not yet locked...
        assert readers.read(b, _count) == 2  # ...when another read evicts it
        assert found is not None and found.closed
        real = readers._get
        first = [found]
        readers._get = lambda path: first.pop() if first else real(path)  # type: ignore[method-assign]
        assert readers.read(a, _count) == 1  # opened again, not "closed database"
    finally:
        readers.close()
