"""What the supervisor knows of each live task, and the progress the task reports itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bus.messages import State
from core.options import TaskOptions
from core.status import TaskStatus
from runner import process, sandbox
from store import Store

# A running task's row (progress, message) is written from its states at most this often.
ROW_INTERVAL = 1.0


class Running:
    """What the supervisor knows of one live task process."""

    def __init__(self, task_id: str, child: process.TaskProcess, options: TaskOptions) -> None:
        self.task_id = task_id
        self.child = child
        self.options = options
        self.started = time.monotonic()
        # (final status, message) once we decided to stop it: the outcome, whatever the exit.
        self.stop_reason: tuple[TaskStatus, str] | None = None
        self.stopping: asyncio.Task[str] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.plan = sandbox.Plan(mode="off")
        self.dirs: list[Path] = []
        # Progress the task reported on the bus (authenticated by the proxy), not yet written.
        self.reported_version = 0
        self.pending_row: dict[str, Any] | None = None
        self.row_due = 0.0
        self.row_lock = asyncio.Lock()
        self.finished = False
        self.epoch: int | None = None  # the run epoch its writes are fenced with


class Progress:
    """Mixin of :class:`runner.supervisor.Supervisor`: running tasks' own progress rows."""

    store: Store
    running: dict[str, Running]
    _clock: Callable[[], float]
    _db: Callable[..., Any]

    def reported(self, msg: State) -> None:
        """A running task's own progress state (the proxy checked who sent it)."""
        run = self.running.get(msg.task_id)
        if run is None or run.finished or msg.status != TaskStatus.RUNNING:
            return  # the outcome is ours to write, never the task's
        if msg.version <= run.reported_version:
            return
        run.reported_version = msg.version
        run.pending_row = dict(
            progress=msg.progress,
            current_agent=msg.current_agent,
            last_message=msg.last_message,
            last_event_id=msg.last_event_id,
            state_version=msg.version,
        )

    async def write_progress(self) -> None:
        """Write the running tasks' reported progress rows (each at most every ROW_INTERVAL)."""
        now = self._clock()
        for run in list(self.running.values()):
            if run.pending_row is None or now < run.row_due:
                continue
            async with run.row_lock:
                row, run.pending_row = run.pending_row, None
                if run.finished or row is None:
                    continue
                run.row_due = now + ROW_INTERVAL
                await self._db(self.store.save_state, run.task_id, row, run.epoch)
