"""The outbox's parts alone: state throttling, the task-row writer, pacing, the log budget."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from bus.messages import State, WriteStats
from runner.task import pacing
from runner.task.accounting import LIMIT_SLACK, LogBudget, LogLimitExceeded, count_batch, new_stats
from runner.task.heartbeat import Beats
from runner.task.state_throttle import STATE_INTERVAL, StateThrottle
from runner.task.task_row import TaskRowWriter

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_state_change_is_due_once_per_interval_unless_urgent() -> None:
    clock = Clock()
    throttle = StateThrottle(State(task_id="t", status="RUNNING"), clock)
    assert not throttle.due()
    assert throttle.update(0.5, "Engineer", "one") is True  # clean before: wake the writer
    assert throttle.update(2.0, None, None) is False  # already dirty: no second wake-up
    state, extra, urgent = throttle.take(flush=False)
    assert state is not None and state.progress == 1.0 and state.last_message == "one"
    assert (extra, urgent) == ({}, False)
    throttle.update(0.25, None, "two")
    assert not throttle.due() and throttle.take(flush=False)[0] is None
    clock.now += STATE_INTERVAL
    assert throttle.due()
    throttle.take(flush=False)
    throttle.record({"exit_code": 0})  # urgent: due before the interval
    assert throttle.due()
    state, extra, urgent = throttle.take(flush=False)
    assert state is not None and extra == {"exit_code": 0} and urgent


def test_a_flush_takes_a_pending_change_at_once() -> None:
    throttle = StateThrottle(State(task_id="t", status="RUNNING"), Clock())
    throttle.update(0.1, None, None)
    throttle.take(flush=False)
    throttle.update(0.2, None, None)
    assert not throttle.due()
    throttle.hurry()
    assert throttle.due()


class RowRig:
    def __init__(self, fail: bool = False) -> None:
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)
        self.saved: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.fail = fail
        self.writer = TaskRowWriter(
            self.save, self.lock, self.progress, 7, lambda: False, self.on_error
        )

    def save(self, row: Mapping[str, Any]) -> None:
        if self.fail:
            raise OSError("disk gone")
        self.saved.append(dict(row))

    def on_error(self, exc: BaseException) -> None:
        self.error = exc

    def wait_for(self, done: Any) -> None:
        with self.progress:
            assert self.progress.wait_for(done, timeout=5)


def test_the_row_writer_merges_changes_and_keeps_recorded_columns() -> None:
    rig = RowRig()
    with rig.lock:
        # Both queued before the thread runs: one write, the newest values, the exit code kept.
        assert rig.writer.queue({"progress": 0.1, "exit_code": 0}, 3, urgent=False) == 8
        assert rig.writer.queue({"progress": 0.2}, 5, urgent=True) == 9
        assert rig.writer.behind
    rig.writer.start()
    rig.wait_for(lambda: not rig.writer.behind)
    assert rig.saved == [{"progress": 0.2, "exit_code": 0, "last_event_id": 5, "state_version": 9}]
    with rig.lock:
        rig.writer.stopping = True
    rig.writer.finish(5)


def test_a_failing_row_write_is_reported_not_swallowed() -> None:
    rig = RowRig(fail=True)
    rig.writer.start()
    with rig.lock:
        rig.writer.queue({"progress": 0.5}, 1, urgent=True)
    rig.wait_for(lambda: rig.error is not None)
    assert isinstance(rig.error, OSError) and rig.writer.behind
    rig.writer.finish(5)


def test_pacing_sqlite_emitters_write_batches_postgresql_the_writer_thread() -> None:
    local, server = pacing.for_store(True), pacing.for_store(False)
    assert local.emitter_batch_due(1.0, 1.0 - 2 * pacing.MAX_DELAY)
    assert not local.emitter_batch_due(1.0, 1.0)
    assert not local.writer_may_take(1.0, 1.0)  # the run goes on: the emitters write
    assert local.writer_may_take(1.0, 1.0 - 2 * pacing.INLINE_AFTER)
    assert not server.emitter_batch_due(1.0, 0.0) and server.writer_may_take(1.0, 1.0)
    assert server.pause_starts_after_commit() and not local.pause_starts_after_commit()


def test_the_log_budget_raises_once_then_leaves_room_for_the_error() -> None:
    budget = LogBudget(100)
    budget.spend(60)
    with pytest.raises(LogLimitExceeded, match="100 bytes"):
        budget.spend(60)
    budget.spend(LIMIT_SLACK)  # the task's own error report still fits
    with pytest.raises(LogLimitExceeded):
        budget.spend(1)
    LogBudget(0).spend(10**9)  # 0: no limit


def test_batches_are_counted_into_buckets() -> None:
    stats = new_stats()
    count_batch(stats, 3, 0.002, wall_now=5.0)
    count_batch(stats, 1, 0.001, wall_now=9.0)
    assert (stats.batches, stats.events, stats.first_event_at) == (2, 4, 5.0)
    assert sum(stats.write_buckets) == sum(stats.batch_buckets) == 2


def test_a_stopped_beat_is_never_due_and_does_not_wake_the_writer() -> None:
    now = [100.0]
    beats = Beats("t", 1.0, WriteStats(), clock=lambda: now[0])
    assert beats.due(100.0) and beats.wake_at(100.0) == 100.0
    beats.beating = False
    # Stopped while due: the writer thread must neither send nor wake again at once.
    assert not beats.due(200.0)
    assert beats.wake_at(200.0) >= 250.0
