"""Per-task event log files: readers see what the writer commits, whatever the timing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store import eventlog
from store.eventlog import TaskLogs
from tests.helpers import poll_for

pytestmark = pytest.mark.timeout(60)
DATA = b'{"x":1}'


def test_a_reader_that_came_before_the_table_sees_it_afterwards(tmp_path: Path) -> None:
    readers, writer = TaskLogs(tmp_path), TaskLogs(tmp_path)
    try:
        # The file exists, empty: a task process has just created it (not even in WAL mode).
        writer.task_dir("t").mkdir()
        writer.path("t").touch()
        assert readers.read("t", 0, 10) == [] and readers.last_id("t") == 0
        writer.append("t", [(1, DATA), (2, DATA)])
        assert readers.read("t", 0, 10) == [(1, DATA), (2, DATA)]
        assert readers.last_id("t") == 2
    finally:
        readers.close()
        writer.close()


def test_readers_follow_new_commits(tmp_path: Path) -> None:
    readers, writer = TaskLogs(tmp_path), TaskLogs(tmp_path)
    try:
        assert readers.read("t", 0, 10) == []  # no file at all
        for i in range(1, 201, 100):
            writer.append("t", [(j, DATA) for j in range(i, i + 100)])
            got = readers.read("t", i - 1, 1000)
            assert [e for e, _ in got] == list(range(i, i + 100))  # not a stale snapshot
            assert readers.last_id("t") == i + 99
    finally:
        readers.close()
        writer.close()


def test_an_unreadable_log_raises_instead_of_reading_as_empty(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path)
    try:
        logs.task_dir("t").mkdir()
        logs.path("t").write_bytes(b"this is not a database" * 100)
        with pytest.raises(sqlite3.DatabaseError):
            logs.read("t", 0, 10)
    finally:
        logs.close()


def test_bodies_are_stored_beside_the_json_and_read_back(tmp_path: Path) -> None:
    readers, writer = TaskLogs(tmp_path), TaskLogs(tmp_path)
    try:
        batch = [(i, b'{"i":%d}' % i) for i in range(1, 251)]  # multi-row chunks and the rest
        writer.append("t", batch[:150], [b"B%d" % i for i, _ in batch[:150]])
        writer.append("t", batch[150:])  # no bodies: the JSON stands in for them
        assert readers.read("t", 0, 1000) == batch
        got = readers.read_bodies("t", 148, 4)
        assert got == [(149, b"B149", None), (150, b"B150", None), (151, None, b'{"i":151}'),
                       (152, None, b'{"i":152}')]  # fmt: skip
        # Bodies for every id asked for: the ids are not read again (the fast path), but only
        # up to the log's last event; a read that runs past the bodies still gets the rest.
        assert readers.read_bodies("t", 140, 10) == [(i, b"B%d" % i, None) for i in range(141, 151)]
        assert readers.read_bodies("t", 145, 7)[-2:] == [(151, None, b'{"i":151}'),
                                                          (152, None, b'{"i":152}')]  # fmt: skip
        assert len(readers.read_bodies("t", 0, 1000)) == 250
        with pytest.raises(ValueError, match="2 events but 1 bodies"):
            writer.append("t", [(300, DATA), (301, DATA)], [b"B"])
    finally:
        readers.close()
        writer.close()


class _CommitsBetweenReads:
    """A real reader connection; the task commits two more events after its first query."""

    def __init__(self, conn: sqlite3.Connection, writer: TaskLogs) -> None:
        self._conn, self._writer, self._queries = conn, writer, 0

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        cur = self._conn.execute(sql, params)
        if sql.startswith("SELECT"):
            self._queries += 1
            if self._queries == 1:
                cur = _Fetched(cur.fetchall())  # read before the commit, as SQLite would
                self._writer.append("t", [(3, DATA), (4, DATA)], [b"B3", b"B4"])
        return cur  # type: ignore[return-value]

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


class _Fetched:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple[object, ...]]:
        return self._rows


def test_a_binary_read_sees_one_state_of_a_log_being_written(tmp_path: Path) -> None:
    """Events and bodies are read in one snapshot: commits in between do not mix in."""
    writer, readers = TaskLogs(tmp_path), TaskLogs(tmp_path)
    try:
        writer.append("t", [(1, DATA), (2, DATA)], [b"B1", b"B2"])
        real = readers._readers.read
        readers._readers.read = lambda path, query: real(  # type: ignore[method-assign]
            path,
            lambda c: query(_CommitsBetweenReads(c, writer)),  # type: ignore[arg-type]
        )
        # Before: the ids query saw events 1-2, the bodies query 1-4: an IndexError.
        assert readers.read_bodies("t", 0, 10) == [(1, b"B1", None), (2, b"B2", None)]
        readers._readers.read = real  # type: ignore[method-assign]
        assert readers.read_bodies("t", 2, 10) == [(3, b"B3", None), (4, b"B4", None)]
    finally:
        readers.close()
        writer.close()


def test_a_log_from_before_bodies_reads_and_gets_their_table_when_written(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path)
    try:
        logs.task_dir("t").mkdir()
        old = sqlite3.connect(logs.path("t"))  # the schema before bodies were stored
        old.execute("CREATE TABLE events (event_id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        old.executemany("INSERT INTO events VALUES (?, ?)", [(1, DATA), (2, DATA)])
        old.commit()
        old.close()
        assert logs.read("t", 0, 10) == [(1, DATA), (2, DATA)]
        assert logs.read_bodies("t", 0, 10) == [(1, None, DATA), (2, None, DATA)]
        logs.append("t", [(3, DATA)], [b"B3"])  # the writer adds the bodies table to the old file
        assert logs.read_bodies("t", 1, 10) == [(2, None, DATA), (3, b"B3", None)]
        assert logs.read("t", 0, 10) == [(1, DATA), (2, DATA), (3, DATA)]
    finally:
        logs.close()


def test_a_body_of_the_wrong_type_is_an_unreadable_log(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path)
    try:
        logs.append("t", [(1, DATA)], [b"B"])
        hostile = sqlite3.connect(logs.path("t"))  # the (untrusted) task writes its own file
        hostile.execute("UPDATE bodies SET body = 'text, not bytes'")
        hostile.commit()
        hostile.close()
        with pytest.raises(eventlog.EventLogUnreadable, match="wrong types"):
            logs.read_bodies("t", 0, 10)
        assert logs.read("t", 0, 10) == [(1, DATA)]  # JSON readers are not affected
    finally:
        logs.close()


def test_checkpoints_wait_for_a_quiet_log_or_a_large_wal() -> None:
    # Each checkpoint flushes to disk and disturbs the event path: none while events flow.
    assert not eventlog.checkpoint_due(0, 3600.0)  # nothing written since the last one
    assert not eventlog.checkpoint_due(500, 0.001)  # a steady stream, WAL still small
    assert eventlog.checkpoint_due(1, eventlog.CHECKPOINT_IDLE)  # the log went quiet
    assert eventlog.checkpoint_due(eventlog.CHECKPOINT_FRAMES, 0.001)  # the WAL grew large


def _checkpointed(logs: TaskLogs, before: int) -> bool:
    # Until a checkpoint, commits live in the WAL only: the database file does not grow.
    return logs.path("t").stat().st_size > before


def test_a_log_that_goes_quiet_is_checkpointed(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path)
    try:
        logs.open("t")
        before = logs.path("t").stat().st_size
        for i in range(1, 201):
            logs.append("t", [(i, b"x" * 400)])
        poll_for(lambda: _checkpointed(logs, before), 10, what="a checkpoint")
        assert logs.read("t", 0, 1000)[-1] == (200, b"x" * 400)
    finally:
        logs.close()


def test_a_log_that_never_pauses_is_checkpointed_once_its_wal_is_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog, "CHECKPOINT_IDLE", 3600.0)  # never quiet enough
    monkeypatch.setattr(eventlog, "CHECKPOINT_FRAMES", 50)
    logs = TaskLogs(tmp_path)
    try:
        logs.open("t")
        before = logs.path("t").stat().st_size
        logs.append("t", [(i, b"x" * 400) for i in range(1, 21)])  # ~3 pages: not yet
        logs.append("t", [(i, b"x" * 4000) for i in range(21, 81)])  # ~60 more pages
        poll_for(lambda: _checkpointed(logs, before), 10, what="a checkpoint")
    finally:
        logs.close()
