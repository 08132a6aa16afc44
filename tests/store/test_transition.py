"""Store.transition on a real SQLite file: the table is enforced where the status is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from core.clock import utcnow
from core.status import TaskStatus, TransitionError
from store import Store

S = TaskStatus


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "events")
    s.create_schema()
    s.create_task("t", "req", False, {}, utcnow())
    yield s
    s.close()


def test_a_task_walks_the_table_and_each_move_bumps_the_version(store: Store) -> None:
    row = store.get_task("t")
    assert row is not None and row.status is S.PENDING and row.state_version == 0
    queued = store.transition("t", S.QUEUED, last_message="waiting")
    running = store.transition("t", S.RUNNING, (S.QUEUED,))
    done = store.transition("t", S.COMPLETED, progress=1.0)
    assert [queued.status, running.status, done.status] == [S.QUEUED, S.RUNNING, S.COMPLETED]
    assert [queued.state_version, running.state_version, done.state_version] == [1, 2, 3]
    assert queued.last_message == "waiting" and done.progress == 1.0
    again = store.get_task("t")
    assert again is not None and again.status is S.COMPLETED


def test_a_move_from_the_wrong_status_raises_and_writes_nothing(store: Store) -> None:
    store.transition("t", S.CANCELLED)
    with pytest.raises(TransitionError, match="expected QUEUED, got CANCELLED") as err:
        store.transition("t", S.RUNNING, last_message="should not be written")
    assert err.value.got == S.CANCELLED
    row = store.get_task("t")
    assert row is not None and row.status is S.CANCELLED and row.state_version == 1
    assert row.last_message is None


def test_a_move_the_table_forbids_raises_before_touching_the_row(store: Store) -> None:
    with pytest.raises(TransitionError, match="expected QUEUED, got PENDING"):
        store.transition("t", S.RUNNING, (S.PENDING,))
    row = store.get_task("t")
    assert row is not None and row.status is S.PENDING and row.state_version == 0


def test_compare_and_set_loses_cleanly_to_another_writer(store: Store) -> None:
    store.transition("t", S.QUEUED)
    store.transition("t", S.CANCELLED, (S.PENDING, S.QUEUED))  # a cancel got there first
    with pytest.raises(TransitionError, match="expected QUEUED, got CANCELLED"):
        store.transition("t", S.RUNNING)


def test_status_is_written_only_through_transition(store: Store) -> None:
    with pytest.raises(ValueError, match=r"only through Store\.transition"):
        store.save_state("t", {"status": "RUNNING"})
    with pytest.raises(KeyError):
        store.transition("nope", S.QUEUED)


def test_unknown_options_are_refused_by_name(store: Store) -> None:
    with pytest.raises(msgspec.ValidationError, match="on_disconnect"):
        store.create_task("u", "req", False, {"on_disconnect": "kill"}, utcnow())
    assert store.get_task("u") is None


def test_runs_are_numbered_per_task_and_updated(store: Store) -> None:
    first = store.runs.add("t", "start", "a calculator", "QUEUED", "2026-01-01T00:00:00Z")
    second = store.runs.add("t", "follow_up", "add a table", "QUEUED", "2026-01-01T00:01:00Z")
    assert (first.run_no, second.run_no) == (1, 2)
    store.runs.update("t", 2, status="COMPLETED", first_event_id=10, last_event_id=20)
    runs = store.runs.list("t")
    assert [(r.kind, r.status, r.first_event_id) for r in runs] == [
        ("start", "QUEUED", None),
        ("follow_up", "COMPLETED", 10),
    ]
    assert store.runs.latest("t") == runs[-1] and store.runs.latest("other") is None
    with pytest.raises(ValueError, match="run kind must be one of"):
        store.runs.add("t", "again", "x", "QUEUED", "2026-01-01T00:02:00Z")
