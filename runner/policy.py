"""Supervision policies: pure decisions over an injected clock, no processes, no sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import msgspec

Clock = Callable[[], float]
# Where the stop sequence starts: ask (SIGINT, let the task flush), term (SIGTERM the group),
# kill (SIGKILL: the task is hung or out of memory).
StopFrom = Literal["ask", "term", "kill"]


class HeartbeatPolicy:
    """Decides which tasks went silent for too long.

    The supervisor also hears its own beacon through the bus; while that is missing the bus is
    down, nobody's silence means anything, and every deadline is pushed back. ``beacon_every`` is
    how often the beacon is sent: a gap of more than two of those is an outage, even one shorter
    than the timeout (a bus restarted in 3 s of a 5 s timeout left tasks 2 s to reconnect).
    """

    def __init__(
        self,
        timeout: float,
        startup_grace: float,
        clock: Clock = time.monotonic,
        beacon_every: float = 0.5,
    ):
        self.timeout = timeout
        self.startup_grace = startup_grace
        self._clock = clock
        # One lost beacon (plus jitter) is an outage: a shorter threshold left too little of
        # the timeout to tasks that lost a beat to a bus restart of under 2 s (CI, loaded).
        self._outage = min(timeout, 2.5 * beacon_every)
        self._last: dict[str, float] = {}
        self._beacon = clock()

    def started(self, task_id: str) -> None:
        # A new process gets extra time to import and send its first beat.
        self._last[task_id] = self._clock() + self.startup_grace

    def beat(self, task_id: str) -> None:
        # The first beat ends the start-up grace: from then on the plain timeout applies.
        if task_id in self._last:
            self._last[task_id] = self._clock()

    def beacon(self) -> bool:
        """Our own beacon came back through the bus; True if the bus had been down."""
        now = self._clock()
        was_down = now - self._beacon > self._outage
        if was_down:
            # The bus was down: nobody could be heard, and a task's publisher reconnects after
            # ours did, so every task's clock restarts now.
            for task_id in self._last:
                self._last[task_id] = max(self._last[task_id], now)
        self._beacon = now
        return was_down

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


class DisconnectPolicy:
    """Who watches which task, from gateways' leases; decides when nobody has for too long.

    Gateways renew a lease per watched task (and send one with zero watchers as soon as the
    last client leaves). A lease that is not renewed expires, so a dead gateway counts as a
    disconnect of all its clients. A task is judged only after it has been watched once.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, dict[str, tuple[int, float]]] = {}  # task -> gw -> (n, expiry)
        self._unwatched_since: dict[str, float] = {}

    def lease(self, task_id: str, gateway_id: str, watchers: int, ttl: float) -> None:
        now = self._clock()
        self._leases.setdefault(task_id, {})[gateway_id] = (watchers, now + ttl)
        if watchers > 0:
            self._unwatched_since.pop(task_id, None)
        else:
            self._refresh(task_id, now)

    def forget(self, task_id: str) -> None:
        self._leases.pop(task_id, None)
        self._unwatched_since.pop(task_id, None)

    def pause(self) -> None:
        """The bus was down (no lease could arrive): restart every unwatched clock."""
        now = self._clock()
        for task_id, leases in self._leases.items():
            self._leases[task_id] = {g: (n, max(exp, now + 1.0)) for g, (n, exp) in leases.items()}
        for task_id in self._unwatched_since:
            self._unwatched_since[task_id] = now

    def watchers(self, task_id: str) -> int:
        now = self._clock()
        return sum(n for n, exp in self._leases.get(task_id, {}).values() if exp > now)

    def _refresh(self, task_id: str, now: float) -> None:
        if task_id not in self._leases:
            return  # never watched: not judged
        if self.watchers(task_id) == 0:
            self._unwatched_since.setdefault(task_id, now)
        else:
            self._unwatched_since.pop(task_id, None)

    def should_stop(self, task_id: str, mode: str, grace: float) -> bool:
        """True when the task's policy says it must be stopped now."""
        if mode == "continue":
            return False
        now = self._clock()
        self._refresh(task_id, now)
        since = self._unwatched_since.get(task_id)
        if since is None:
            return False
        return mode == "kill" or now - since >= grace


class Breach(msgspec.Struct, frozen=True):
    """A limit a task went over; its kind, not its text, says how the stop sequence starts."""

    kind: Literal["time", "memory"]
    message: str

    @property
    def stop_from(self) -> StopFrom:
        # Out of memory: kill at once, the memory is the problem; out of time: SIGTERM first.
        return "kill" if self.kind == "memory" else "term"


class Limits:
    """Per-task wall-clock and memory limits (0 = none)."""

    def __init__(self, timeout: float, memory_mb: float) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb

    def breach(self, running_for: float, rss_mb: float) -> Breach | None:
        """Why the task must stop, or None."""
        if self.timeout > 0 and running_for > self.timeout:
            return Breach("time", f"Task exceeded its time limit of {self.timeout:g} s")
        if self.memory_mb > 0 and rss_mb > self.memory_mb:
            return Breach(
                "memory", f"Task exceeded its memory limit: {rss_mb:.0f} MB > {self.memory_mb:g} MB"
            )
        return None
