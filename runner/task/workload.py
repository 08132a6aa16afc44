"""What a workload sees of the task process."""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Cancelled(Exception):
    """The supervisor asked the task to stop."""


class Emitter(Protocol):
    """Thread-safe sink for a workload's events and state."""

    cancelled: threading.Event

    def emit(self, agent_role: str, event_type: str, payload: dict[str, Any]) -> int: ...

    def set_state(
        self,
        *,
        progress: float | None = None,
        current_agent: str | None = None,
        last_message: str | None = None,
    ) -> None: ...

    def flush(self, timeout: float = 30.0) -> bool: ...

    def stop_heartbeats(self) -> None: ...
