"""State throttling: a task's progress state is published at most every STATE_INTERVAL.

Progress changes with nearly every event; publishing a state per event doubled the bus and
WebSocket traffic. Status changes are the supervisor's and go out at once; extra columns
recorded by the task (an exit code, an error) make the next state urgent.
Not thread-safe: the outbox calls it with its lock held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from bus.messages import State

STATE_INTERVAL = 0.25


class StateThrottle:
    """The task's newest state, and whether and when it is due to be published."""

    def __init__(self, state: State, clock: Callable[[], float] = time.monotonic) -> None:
        self._state = state
        self._clock = clock
        self.dirty = False  # changed since last taken
        self.urgent = False  # to be taken at once, not after the interval
        self.next_at = 0.0  # when a change may next be taken
        self._extra: dict[str, Any] = {}

    def update(
        self, progress: float | None, current_agent: str | None, last_message: str | None
    ) -> bool:
        """Change the state's progress fields; True if it was clean before (wake the writer)."""
        st = self._state
        if progress is not None:
            st.progress = min(1.0, max(0.0, float(progress)))
        if current_agent is not None:
            st.current_agent = current_agent
        if last_message is not None:
            st.last_message = last_message
        if self.dirty:
            return False
        self.dirty = True
        return True

    def record(self, columns: dict[str, Any]) -> None:
        """Extra task columns to write with the next state, which is then urgent."""
        self._extra.update(columns)
        self.dirty = self.urgent = True

    def hurry(self) -> None:
        """A flush: a pending change is taken at once."""
        self.urgent = self.dirty

    def due(self) -> bool:
        """A change is taken at most every STATE_INTERVAL, unless it is urgent."""
        return self.dirty and (self.urgent or self._clock() >= self.next_at)

    def take(self, flush: bool) -> tuple[State | None, dict[str, Any], bool]:
        """A copy of the state and its extra columns if due (or ``flush``), and their urgency."""
        urgent = flush or self.urgent
        if not (self.dirty and (flush or self.due())):
            return None, {}, urgent
        state = msgspec.structs.replace(self._state)
        extra, self._extra = self._extra, {}
        self.dirty = self.urgent = False
        self.next_at = self._clock() + STATE_INTERVAL
        return state, extra, urgent
