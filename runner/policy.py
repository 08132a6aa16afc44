"""Supervision policies: pure decisions over an injected clock, no processes, no sockets."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class HeartbeatPolicy:
    """Decides which tasks went silent for too long.

    The supervisor also hears its own beacon through the bus; while that is missing the bus is
    down, nobody's silence means anything, and every deadline is pushed back.
    """

    def __init__(self, timeout: float, startup_grace: float, clock: Clock = time.monotonic):
        self.timeout = timeout
        self.startup_grace = startup_grace
        self._clock = clock
        self._last: dict[str, float] = {}
        self._beacon = clock()

    def started(self, task_id: str) -> None:
        # A new process gets extra time to import and send its first beat.
        self._last[task_id] = self._clock() + self.startup_grace

    def beat(self, task_id: str) -> None:
        if task_id in self._last:
            self._last[task_id] = max(self._last[task_id], self._clock())

    def beacon(self) -> None:
        """Our own beacon came back through the bus."""
        now = self._clock()
        if now - self._beacon > self.timeout:
            # The bus was down: nobody could be heard, so restart every task's clock.
            for task_id in self._last:
                self._last[task_id] = max(self._last[task_id], now)
        self._beacon = now

    def forget(self, task_id: str) -> None:
        self._last.pop(task_id, None)

    def bus_ok(self) -> bool:
        return self._clock() - self._beacon <= self.timeout

    def overdue(self) -> list[tuple[str, float]]:
        """Tasks silent for longer than the timeout, with how long they have been silent."""
        if not self.bus_ok():
            return []
        now = self._clock()
        return [(t, now - last) for t, last in self._last.items() if now - last > self.timeout]


class Admission:
    """How many tasks may run at once; the rest wait as QUEUED, first come first served."""

    def __init__(self, max_running: int) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        self.max_running = max_running

    def free_slots(self, running: int) -> int:
        return max(0, self.max_running - running)
