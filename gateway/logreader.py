"""Event-log reads for connections that catch up, shared between them.

A connection that is behind (a replay, a resume, a task faster than the client) reads the
task's event log instead of the live bus. Many connections on one task would each read the
same rows and build the same frames; here the log is read in fixed blocks of event ids, each
row read and framed once, concurrent readers of a block share one database read, and recent
blocks stay in memory (least recently used first out, bounded in bytes) for the connections
that follow.

Only a cache of the log, which stays the source of truth: every gateway process keeps its own.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
from dataclasses import dataclass, field
from operator import itemgetter

import anyio

from bus.messages import ws_frame
from store import Store

Row = tuple[int, bytes]  # (event_id, the event's WebSocket message as UTF-8)
_event_id = itemgetter(0)


@dataclass(slots=True)
class _Block:
    """Events with ids in ``(start, end]``: every one up to ``covered`` is in ``rows``."""

    start: int
    end: int
    covered: int
    rows: list[Row] = field(default_factory=list)
    size: int = 0  # characters held, for the cache's budget
    reading: asyncio.Task[None] | None = None

    @property
    def complete(self) -> bool:
        return self.covered >= self.end


class LogReader:
    """Reads task event logs as ready frames, in blocks shared by every connection."""

    def __init__(self, store: Store, block: int = 2000, budget_bytes: int = 64 << 20) -> None:
        self.store = store
        self.block = block
        self.budget = budget_bytes
        self._blocks: collections.OrderedDict[tuple[str, int], _Block] = collections.OrderedDict()
        self._size = 0
        self.db_reads = 0  # how many database reads were made (the sharing, seen by tests)

    async def read(self, task_id: str, after: int) -> list[Row]:
        """Logged events with ids above ``after``, in order, up to the end of a block.

        Empty when the log has nothing newer yet. Raises what the database raises.
        """
        while True:
            blk = self._get(task_id, after // self.block)
            i = bisect.bisect_right(blk.rows, after, key=_event_id)
            if i == len(blk.rows) and not blk.complete:
                await self._fill(task_id, blk)
                i = bisect.bisect_right(blk.rows, after, key=_event_id)
            if i < len(blk.rows):
                if blk.complete:  # a reader moving through the log: have the next one ready
                    self._prefetch(task_id, blk.end // self.block)
                return blk.rows[i:]
            if not blk.complete:
                return []  # nothing newer logged yet
            after = blk.end  # ids skip the rest of this block (a gap): the next one

    def _get(self, task_id: str, index: int) -> _Block:
        key = (task_id, index)
        blk = self._blocks.get(key)
        if blk is None:
            start = index * self.block
            blk = self._blocks[key] = _Block(start, start + self.block, start)
        else:
            self._blocks.move_to_end(key)
        return blk

    async def _fill(self, task_id: str, blk: _Block) -> None:
        """Read what the log has beyond ``blk.covered``; concurrent callers share one read."""
        if blk.reading is None:
            blk.reading = asyncio.ensure_future(self._read_into(task_id, blk))
        # Shielded: a connection that leaves must not cancel the read others wait for.
        await asyncio.shield(blk.reading)

    def _prefetch(self, task_id: str, index: int) -> None:
        nxt = self._get(task_id, index)
        if nxt.reading is None and not nxt.rows and not nxt.complete:
            nxt.reading = asyncio.ensure_future(self._read_into(task_id, nxt))
            # Nobody may wait for it: a failure is raised again by the next read, not lost.
            nxt.reading.add_done_callback(_retrieve)

    async def _read_into(self, task_id: str, blk: _Block) -> None:
        try:
            after, limit = blk.covered, blk.end - blk.covered
            self.db_reads += 1
            rows = await anyio.to_thread.run_sync(self.store.read_events, task_id, after, limit)
            frames = [(i, ws_frame("event", data)) for i, data in rows if i <= blk.end]
            blk.rows += frames
            added = sum(len(f) for _, f in frames) + 64 * len(frames)
            blk.size += added
            self._size += added
            if rows:
                # Everything up to the last row read is known (a short read: the log's end,
                # for now); a row past the block's end means the rest of it is a gap.
                blk.covered = min(blk.end, rows[-1][0])
            self._evict()
        finally:
            blk.reading = None

    def _evict(self) -> None:
        if self._size <= self.budget:
            return
        for key in list(self._blocks)[:-1]:  # oldest first; the newest always stays
            blk = self._blocks[key]
            if blk.reading is not None:
                continue  # being read: others wait for it
            del self._blocks[key]
            self._size -= blk.size
            if self._size <= self.budget:
                return


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
