"""Task row updates on embedded SQLite (store.rowwriter), through the Store as tasks use it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from bus.messages import utcnow
from store import Store
from store.rowwriter import RowWriter

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "events")
    s.create_schema()
    s.create_task("t", "req", False, {}, utcnow())
    yield s
    s.close()


def test_a_state_write_is_what_readers_of_the_row_see(store: Store) -> None:
    store.save_state("t", {"progress": 0.5, "current_agent": "Engineer", "state_version": 7})
    store.save_state("t", {"last_message": 'it\'s "quoted"; DROP TABLE tasks', "last_event_id": 9})
    row = store.get_task("t")
    assert row is not None
    assert (row.progress, row.current_agent, row.state_version) == (0.5, "Engineer", 7)
    assert (row.last_message, row.last_event_id) == ('it\'s "quoted"; DROP TABLE tasks', 9)


def test_unknown_columns_are_refused_and_change_nothing(store: Store) -> None:
    with pytest.raises(ValueError, match="expected columns of tasks"):
        store.save_state("t", {"progress": 0.9, "progress = 1, status": "x"})
    with pytest.raises(ValueError, match="expected columns of tasks"):
        store.save_state("t", {})
    row = store.get_task("t")
    assert row is not None and row.progress == 0.0


def test_a_write_waits_for_another_writer_instead_of_failing(store: Store, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the gateway or the supervisor, mid-transaction
    released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    released.start()
    try:
        store.save_state("t", {"progress": 0.25})
    finally:
        released.join()
        other.close()
    row = store.get_task("t")
    assert row is not None and row.progress == 0.25


def test_a_missing_database_raises(tmp_path: Path) -> None:
    writer = RowWriter(str(tmp_path / "no" / "such" / "dir.db"), 1000)
    with pytest.raises(sqlite3.OperationalError):
        writer.update("t", {"progress": 1.0})
    writer.close()
