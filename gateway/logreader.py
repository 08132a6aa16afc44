"""Event-log reads for connections that catch up, shared between them.

A connection that is behind (a replay, a resume, a task faster than the client) reads the
task's event log instead of the live bus. Many connections on one task would each read the
same rows and build the same frames; here the log is read in fixed blocks of event ids, each
row read and framed once, concurrent readers of a block share one database read, and recent
blocks stay in memory (least recently used first out, bounded in bytes) for the connections
that follow.

Binary connections read blocks of their own: the events' bus bodies as the task logged them
(store ``events.body``), sent as they are, as live bus bodies are (the store checks each row
before it leaves it: ``store.checked``); only rows logged without a
body (before bodies were stored) are converted from their JSON, a page at a time. A JSON
connection never reads the bodies, nor a binary one the JSON.

Only a cache of the log, which stays the source of truth: every gateway process keeps its own.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
from dataclasses import dataclass, field
from operator import itemgetter

import anyio

from gateway.frames import EVENT_FRAME_PREFIX, events_to_msgpack
from store import Store

# (event_id, the event's WebSocket message as UTF-8), or in a binary block (event_id, its body)
Row = tuple[int, bytes]
Key = tuple[str, bool, int]  # (task id, binary, the block's start)
_event_id = itemgetter(0)
FIRST_READ = 4  # rows asked for before a task's row size is known (they may be 1 MB each)


@dataclass(slots=True)
class _Block:
    """Events with ids in ``(start, end]``: every one up to ``covered`` is in ``rows``."""

    start: int
    end: int
    covered: int
    binary: bool = False  # rows of bus bodies (MessagePack), not JSON frames
    rows: list[Row] = field(default_factory=list)
    size: int = 0  # bytes held, for the cache's budget
    reading: asyncio.Task[None] | None = None

    @property
    def complete(self) -> bool:
        return self.covered >= self.end


class LogReader:
    """Reads task event logs as ready frames, in blocks shared by every connection.

    A block holds at most ``block`` events and about ``block_bytes`` of frames: one that
    reaches the byte size while being read is cut there, and the next block starts where it
    ends. Each database read asks for as many rows as should fit (from the sizes seen so far),
    so a log of megabyte events is read a few events at a time, never 2,000 megabytes at once.
    """

    def __init__(
        self,
        store: Store,
        block: int = 2000,
        budget_bytes: int = 64 << 20,
        block_bytes: int = 2 << 20,
        first_read: int = FIRST_READ,
    ) -> None:
        self.store = store
        self.block = block
        self.budget = budget_bytes
        self.block_bytes = block_bytes
        self.first_read = first_read
        self._blocks: collections.OrderedDict[Key, _Block] = collections.OrderedDict()
        # Per task and kind (binary or not): the sorted starts of its blocks, and the average
        # size of a row last read.
        self._starts: dict[tuple[str, bool], list[int]] = {}
        self._row_size: dict[tuple[str, bool], int] = {}
        self._size = 0
        self.db_reads = 0  # how many database reads were made (the sharing, seen by tests)

    async def read(
        self, task_id: str, after: int, logged: bool = False, binary: bool = False
    ) -> list[Row]:
        """Logged events with ids above ``after``, in order, up to the end of a block.

        Empty when the log has nothing newer yet. Raises what the database raises.
        ``logged``: the caller knows the event after ``after`` is committed (a final state
        or a heartbeat said so), so a shared read that was already under way when it asked
        (it may have begun before that commit) does not count as "nothing newer".
        ``binary``: rows of ``(event_id, MessagePack body)`` instead of JSON frames.
        """
        sk = (task_id, binary)
        while True:
            blk = self._get(sk, after)
            i = bisect.bisect_right(blk.rows, after, key=_event_id)
            while i == len(blk.rows) and not blk.complete:
                covered = blk.covered
                # A shared read already under way may have begun before rows this caller
                # knows of were committed (``logged``): its "nothing new" then only counts
                # for a read that began after this call.
                fresh = blk.reading is None or not logged
                await self._fill(task_id, blk)
                i = bisect.bisect_right(blk.rows, after, key=_event_id)
                if blk.covered == covered and fresh:
                    break  # the log's end, for now
            if i < len(blk.rows):
                if blk.complete:  # a reader moving through the log: have the next one ready
                    self._prefetch(sk, blk.end)
                return blk.rows[i:]
            if not blk.complete:
                return []  # nothing newer logged yet
            after = blk.end  # ids skip the rest of this block (a gap): the next one

    def _get(self, sk: tuple[str, bool], after: int) -> _Block:
        """The block holding the events just after ``after``, made if there is none."""
        starts = self._starts.setdefault(sk, [])
        i = bisect.bisect_right(starts, after)
        if i:
            key = (*sk, starts[i - 1])
            blk = self._blocks[key]
            if after < blk.end:
                self._blocks.move_to_end(key)
                return blk
        end = after + self.block
        if i < len(starts):
            end = min(end, starts[i])  # up to the next block
        blk = self._blocks[(*sk, after)] = _Block(after, end, after, binary=sk[1])
        starts.insert(i, after)
        return blk

    async def _fill(self, task_id: str, blk: _Block) -> None:
        """Read what the log has beyond ``blk.covered``; concurrent callers share one read."""
        if blk.reading is None:
            blk.reading = asyncio.ensure_future(self._read_into(task_id, blk))
        # Shielded: a connection that leaves must not cancel the read others wait for.
        await asyncio.shield(blk.reading)

    def _prefetch(self, sk: tuple[str, bool], after: int) -> None:
        nxt = self._get(sk, after)
        if nxt.reading is None and not nxt.rows and not nxt.complete:
            nxt.reading = asyncio.ensure_future(self._read_into(sk[0], nxt))
            # Nobody may wait for it: a failure is raised again by the next read, not lost.
            nxt.reading.add_done_callback(_retrieve)

    def _rows_that_fit(self, task_id: str, blk: _Block) -> int:
        limit = blk.end - blk.covered
        seen = self._row_size.get((task_id, blk.binary))
        room = max(self.block_bytes - blk.size, 1)
        fit = -(-room // seen) if seen else self.first_read  # rounded up: one read fills it
        return max(1, min(limit, fit))

    async def _read_into(self, task_id: str, blk: _Block) -> None:
        try:
            after, limit = blk.covered, self._rows_that_fit(task_id, blk)
            self.db_reads += 1
            end = blk.end
            if blk.binary:
                got = await anyio.to_thread.run_sync(
                    self.store.read_event_bodies, task_id, after, limit
                )
                frames = _bodies([r for r in got if r[0] <= end])
                beyond = len(got) > len(frames)
            else:
                rows = await anyio.to_thread.run_sync(self.store.read_events, task_id, after, limit)
                # ws_frame("event", data) inlined: a call per row is half of this line's cost.
                frames = [(i, EVENT_FRAME_PREFIX + data + b"}") for i, data in rows if i <= end]
                beyond = len(rows) > len(frames)
                del rows  # the raw rows are not kept alongside their frames
            blk.rows += frames
            added = sum(len(f) for _, f in frames) + 64 * len(frames)
            blk.size += added
            self._size += added
            if frames:
                self._row_size[(task_id, blk.binary)] = max(1, added // len(frames))
                blk.covered = frames[-1][0]
            if beyond:
                blk.covered = blk.end  # a row past the block's end: the rest of it is a gap
            if blk.size >= self.block_bytes and not blk.complete:
                blk.end = blk.covered  # full by bytes: the next block starts here
            self._evict()
        finally:
            blk.reading = None

    def forget(self, task_id: str) -> None:
        """Drop an ended task's cached blocks (not those being read: others wait on them)."""
        for binary in (False, True):
            for start in list(self._starts.get((task_id, binary), ())):
                key = (task_id, binary, start)
                if self._blocks[key].reading is None:
                    self._drop(key)

    def _drop(self, key: Key) -> None:
        blk = self._blocks.pop(key)
        sk = (key[0], key[1])
        starts = self._starts[sk]
        del starts[bisect.bisect_left(starts, key[2])]
        if not starts:
            del self._starts[sk]
            self._row_size.pop(sk, None)
        self._size -= blk.size

    def _evict(self) -> None:
        if self._size <= self.budget:
            return
        for key in list(self._blocks)[:-1]:  # oldest first; the newest always stays
            blk = self._blocks[key]
            if blk.reading is not None:
                continue  # being read: others wait for it
            self._drop(key)
            if self._size <= self.budget:
                return


def _bodies(got: list[tuple[int, bytes | None, bytes | None]]) -> list[Row]:
    """A binary block's rows: the logged bodies, and the rows logged without one converted."""
    rows = [(i, b) for i, b, _ in got if b is not None]
    if len(rows) == len(got):
        return rows  # every body is there: the common case, no per-row work but this
    # (store.read_event_bodies gives the JSON exactly where the body is missing)
    missing = [(k, d) for k, (_, b, d) in enumerate(got) if b is None and d is not None]
    converted = events_to_msgpack([EVENT_FRAME_PREFIX + d + b"}" for _, d in missing])
    out: list[Row] = [(i, b or b"") for i, b, _ in got]
    for (k, _), body in zip(missing, converted, strict=True):
        out[k] = (got[k][0], body)
    return out


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
