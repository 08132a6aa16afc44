"""What the outbox counts: the event-log byte budget and the write statistics it reports."""

from __future__ import annotations

import bisect

from bus.messages import BATCH_SIZE_BOUNDS, WRITE_SECONDS_BOUNDS, WriteStats

LIMIT_SLACK = 64 * 1024  # room left after the limit for the task's error event


class LogLimitExceeded(RuntimeError):
    """The task logged more event bytes than METASTREAM_TASK_MAX_LOG_BYTES allows."""


class LogBudget:
    """Bytes of events one run may log (0 = no limit); past it, :meth:`spend` raises."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._spent = 0

    def spend(self, size: int) -> None:
        """Raise LogLimitExceeded if logging ``size`` more bytes passes the limit."""
        limit = self._max
        if limit > 0 and self._spent + size > limit:
            # Once: the task's own error report that follows must still fit.
            self._max = self._spent + LIMIT_SLACK
            raise LogLimitExceeded(
                f"event log limit reached: {limit} bytes of events (METASTREAM_TASK_MAX_LOG_BYTES)"
            )
        self._spent += size


def new_stats() -> WriteStats:
    """Empty write statistics (what the supervisor exports for a task process)."""
    return WriteStats(
        write_buckets=[0] * (len(WRITE_SECONDS_BOUNDS) + 1),
        batch_buckets=[0] * (len(BATCH_SIZE_BOUNDS) + 1),
    )


def count_batch(stats: WriteStats, events: int, seconds: float, wall_now: float) -> None:
    """Count one committed batch of ``events`` that took ``seconds`` to write."""
    if not stats.batches:
        stats.first_event_at = wall_now
    stats.batches += 1
    stats.events += events
    stats.write_seconds += seconds
    stats.write_buckets[bisect.bisect_left(WRITE_SECONDS_BOUNDS, seconds)] += 1
    stats.batch_buckets[bisect.bisect_left(BATCH_SIZE_BOUNDS, events)] += 1
