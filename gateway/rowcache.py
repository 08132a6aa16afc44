"""Task rows read once for all the connections of a task that ask at about the same time.

A connection that has heard nothing for a while looks at its task's row (a lost final state,
events logged while the bus dropped them). With 1,000 connections on one task that was 1,000
store reads a second, each ~1 ms of SQLAlchemy in a worker thread: the whole gateway, before
a single event was sent. Here concurrent askers share one read, and a row read less than
``max_age`` seconds ago is answered from memory.

Only for those periodic looks: a decision that must see the store after a given message (a
final state ends a stream only if the store agrees) reads it itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio

from core.task import TaskRow
from store import Store

PURGE_EVERY = 1024  # gets between sweeps of rows too old to be answered again


class TaskRowCache:
    """Shared, briefly cached ``store.get_task`` reads."""

    def __init__(
        self, store: Store, max_age: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.clock = clock
        self._rows: dict[str, tuple[float, TaskRow | None]] = {}  # task id -> (read at, row)
        self._reading: dict[str, asyncio.Future[TaskRow | None]] = {}
        self._gets = 0
        self.reads = 0  # store reads made (the sharing, seen by tests)

    async def get(self, task_id: str) -> TaskRow | None:
        """The task's row as read at most ``max_age`` seconds ago (None: no such task)."""
        now = self.clock()
        self._gets += 1
        if self._gets % PURGE_EVERY == 0:
            self._purge(now)
        hit = self._rows.get(task_id)
        if hit is not None and now - hit[0] <= self.max_age:
            return hit[1]
        reading = self._reading.get(task_id)
        if reading is None:
            reading = self._reading[task_id] = asyncio.ensure_future(self._read(task_id, now))
            reading.add_done_callback(_retrieve)  # an error nobody waits for is not logged
        # Shielded: a connection that leaves must not cancel the read others wait for.
        return await asyncio.shield(reading)

    async def _read(self, task_id: str, started: float) -> TaskRow | None:
        try:
            self.reads += 1
            row = await anyio.to_thread.run_sync(self.store.get_task, task_id)
            self._rows[task_id] = (started, row)
            return row
        finally:
            del self._reading[task_id]

    def _purge(self, now: float) -> None:
        old = [t for t, (at, _) in self._rows.items() if now - at > self.max_age]
        for t in old:
            del self._rows[t]


def _retrieve(fut: asyncio.Future[TaskRow | None]) -> None:
    if not fut.cancelled():
        fut.exception()
