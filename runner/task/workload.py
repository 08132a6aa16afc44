"""What a workload sees of the task process."""

from __future__ import annotations

from typing import Protocol

from runner.metagpt_flow.events import Emitter as FlowEmitter


class Cancelled(Exception):
    """The supervisor asked the task to stop."""


class Emitter(FlowEmitter, Protocol):
    """The MetaGPT flow's event sink, plus what the synthetic fault drills need."""

    def flush(self, timeout: float = 30.0) -> bool: ...

    def stop_heartbeats(self) -> None: ...
