"""The task's heartbeats: sent by the outbox's writer thread, so they keep coming while a
workload blocks its own event loop (or with an emitter's own write when one is due: flat out,
the emitter holds the log), and carry the process's write statistics."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bus.messages import Heartbeat, WriteStats


class Beats:
    """When the next heartbeat is due, and what it says."""

    def __init__(
        self,
        task_id: str,
        interval: float,
        stats: WriteStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._task_id = task_id
        self._interval = interval
        self._stats = stats
        self._clock = clock
        self.beating = True  # False after stop() (the synthetic ``hang_after`` drill)
        self.next_at = clock()

    def due(self, now: float) -> bool:
        """The beat's time has come (never, once stopped)."""
        return self.beating and now >= self.next_at

    def wake_at(self, now: float) -> float:
        """When the writer thread must wake for a beat; once stopped, not for one (a minute
        on: any work wakes it sooner). A stopped beat that stayed due spun the thread."""
        return self.next_at if self.beating else now + 60.0

    def sent(self) -> None:
        self.next_at = self._clock() + self._interval

    def message(self, last_event_id: int) -> Heartbeat:
        return Heartbeat(
            task_id=self._task_id,
            last_event_id=last_event_id,
            pid=os.getpid(),
            sent_at=time.time(),
            stats=self._stats,
        )
