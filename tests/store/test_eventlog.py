"""Per-task event log files: readers see what the writer commits, whatever the timing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store.eventlog import TaskLogs

pytestmark = pytest.mark.timeout(60)
DATA = b'{"x":1}'


def test_a_reader_that_came_before_the_table_sees_it_afterwards(tmp_path: Path) -> None:
    readers, writer = TaskLogs(tmp_path), TaskLogs(tmp_path)
    try:
        # The file exists, empty: a task process has just created it (not even in WAL mode).
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
        logs.path("t").write_bytes(b"this is not a database" * 100)
        with pytest.raises(sqlite3.DatabaseError):
            logs.read("t", 0, 10)
    finally:
        logs.close()
