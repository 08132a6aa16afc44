"""Group-commit outbox: every event is in the log before it is on the bus.

Workloads call :meth:`Outbox.emit` and :meth:`Outbox.set_state` from any thread. Events are
written and published by the thread that emits them whenever it can: at once after a pause
(~15 us; lowest latency), and in a fast run as one batch once the oldest pending event has
waited ``MAX_DELAY`` (highest throughput). A writer thread commits what a run leaves pending
when it pauses, publishes state changes, and sends the heartbeats, so they keep coming while a
workload blocks its own event loop.

Why the emitters write their own batches: a separate writer thread, committing while the
workload keeps emitting, waits for the GIL each time SQLite or ZeroMQ hands it back (every
statement, every send), up to the interpreter's 5 ms switch interval: a 4,000-event commit
took 90 ms, 5-9 us per event instead of about 1.5.

On a server database (PostgreSQL) a commit is a round trip of a millisecond or more, during
which the GIL is free: there a run's batches are committed by the writer thread while the
emitters go on (group commit), and emitters write only paced events themselves. An emitter
writing each batch itself would stop emitting for every commit, and each next event would
look paced: one commit per event.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from bus.client import Publisher
from bus.messages import (
    BATCH_SIZE_BOUNDS,
    WRITE_SECONDS_BOUNDS,
    Event,
    Heartbeat,
    State,
    WriteStats,
    event_data_json,
    utcnow,
)


class TaskStore(Protocol):
    """Where the outbox persists: the task's own log (runner.task.spec.OwnLog) or a Store."""

    @property
    def local_commits(self) -> bool: ...

    def open_events(self, task_id: str) -> None: ...

    def append_events(self, task_id: str, batch: Sequence[tuple[int, bytes]]) -> None: ...

    def save_state(self, task_id: str, columns: Mapping[str, Any]) -> None: ...


MAX_PENDING = 20_000  # emitters wait beyond this: memory stays bounded if the log is slow
# Progress changes with nearly every event; publishing a state per event doubled the bus and
# WebSocket traffic. A state is published at most this often (status changes are the
# supervisor's and go out at once).
STATE_INTERVAL = 0.25
# The task row (what REST readers see) is written at most this often; live clients have the
# states. A row write per state made 50 busy tasks 200 writes/s on the shared database (one
# write lock when embedded). Exit codes, errors, flushes and the end are written at once.
ROW_INTERVAL = 1.0
INLINE_AFTER = 0.0002  # an event this long after the previous one is written by its emitter
# In a run of events, the emitter that finds the oldest pending one this old writes the batch.
MAX_DELAY = 0.0005


LIMIT_SLACK = 64 * 1024  # room left after the limit for the task's error event


class LogLimitExceeded(RuntimeError):
    """The task logged more event bytes than METASTREAM_TASK_MAX_LOG_BYTES allows."""


class _Claim(NamedTuple):
    """What one writer took to commit and publish."""

    batch: list[Event]
    rows: list[tuple[int, bytes]]  # the batch as log rows
    state: State | None
    extra: dict[str, Any]
    urgent: bool  # the state's row is written at once, not after ROW_INTERVAL


class Outbox:
    """Persist-then-publish writer for one task's events and state."""

    def __init__(
        self,
        store: TaskStore,
        publisher: Publisher,
        task_id: str,
        first_event_id: int,
        state: State,
        heartbeat_interval: float = 1.0,
        max_log_bytes: int = 0,
    ) -> None:
        self.task_id = task_id
        # Bytes of events this run may log (0 = no limit); past it, emit raises.
        self._max_log_bytes = max_log_bytes
        self._log_bytes = 0
        self.cancelled = threading.Event()
        self._store = store
        self._pub = publisher
        self._hb_interval = heartbeat_interval
        # One lock, three wake-up lists: the writer thread waits for work, the row thread
        # for a row, emitters and flushers for progress. Kept apart so that an event
        # written by its emitter does not wake the idle writer thread for nothing.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._rows = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._pending: list[Event] = []
        # Each pending event as its log row, encoded by the emitter: the writer thread is
        # the pipeline's narrow part, the emitters mostly wait for it.
        self._pending_rows: list[tuple[int, bytes]] = []
        self._next_id = first_event_id
        self._written_id = first_event_id - 1
        self._state = state
        self._state_dirty = False
        self._state_urgent = False
        self._next_state = 0.0
        self._extra: dict[str, Any] = {}
        self._stopping = False
        self._beating = True
        self._error: BaseException | None = None
        # Set while a thread writes the log and publishes (the writer, or an emitter writing
        # its own event): one at a time, which keeps batches in order and the PUB socket
        # (not thread-safe) to one thread.
        self._busy = False
        self._last_emit = 0.0
        self._oldest = 0.0  # when the oldest pending event was emitted
        # Whether a run's emitters commit their own batches (cheap local commits, SQLite).
        self._emitter_batches = store.local_commits
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        # The task row (progress, last message, version) is written by a thread of its own:
        # that write (~1 ms on the shared database) must not hold back the next events.
        # Versions are counted here; the supervisor only writes the row before the task
        # starts and after it ends, so ours stay in order with its.
        self._version = state.version
        self._row_pending: dict[str, Any] | None = None
        self._row_written = state.version
        self._row_urgent = False
        self._row_thread = threading.Thread(target=self._write_rows, name="task-row", daemon=True)
        # What the supervisor exports for this process (it runs no metrics server of its own):
        # updated by whoever holds ``_busy``, sent with every heartbeat.
        self.stats = WriteStats(
            write_buckets=[0] * (len(WRITE_SECONDS_BOUNDS) + 1),
            batch_buckets=[0] * (len(BATCH_SIZE_BOUNDS) + 1),
        )

    def start(self) -> None:
        # Creating the log file takes milliseconds: before the first event, not in its commit.
        self._store.open_events(self.task_id)
        self._thread.start()
        self._row_thread.start()

    # --- called by workloads -------------------------------------------------------------

    def emit(self, agent_role: str, event_type: str, payload: dict[str, Any]) -> int:
        """Queue one event; returns its id."""
        with self._lock:
            while len(self._pending) >= MAX_PENDING and not self._stopping:
                self._progress.wait(0.5)
            self._raise_if_failed()
            event_id = self._next_id
            ev = Event(
                event_id=event_id,
                task_id=self.task_id,
                timestamp=utcnow(),
                agent_role=agent_role,
                event_type=event_type,
                payload=payload,
            )
            row = event_data_json(ev)
            self._count_log_bytes(len(row))
            self._next_id += 1
            now = time.monotonic()
            if not self._pending:
                self._oldest = now
            self._pending.append(ev)
            self._pending_rows.append((event_id, row))
            # Written here, by the emitting thread, when this event follows a pause (sparing
            # a thread hand-off, the largest part of an event's latency at low rates) or the
            # batch has waited long enough (one commit per event would cap the throughput).
            # Otherwise the events wait for the next emit, or for the writer thread once the
            # emitters pause.
            paced = len(self._pending) == 1 and now - self._last_emit >= INLINE_AFTER
            self._last_emit = now  # (the writer thread leaves events to a running emitter)
            while paced and self._busy and not self._stopping:
                # Someone is writing (a heartbeat, a state, another thread's batch: short);
                # after it, this event still goes at once instead of after the writer's wait.
                self._progress.wait(0.1)
            batch_due = self._emitter_batches and now - self._oldest >= MAX_DELAY
            mine = not self._busy and (paced or batch_due)
            if mine:
                claim = self._take(events=True)
            elif len(self._pending) == 1:
                self._work.notify()
        if mine:
            self._write(claim)
            if not self._emitter_batches:
                # The pause before the next event starts now, not before this one's commit.
                with self._lock:
                    self._last_emit = time.monotonic()
        return event_id

    def set_state(
        self,
        *,
        progress: float | None = None,
        current_agent: str | None = None,
        last_message: str | None = None,
    ) -> None:
        """Update the task's progress fields; published with the next commit."""
        with self._lock:
            st = self._state
            if progress is not None:
                st.progress = min(1.0, max(0.0, float(progress)))
            if current_agent is not None:
                st.current_agent = current_agent
            if last_message is not None:
                st.last_message = last_message
            if not self._state_dirty:
                self._state_dirty = True
                self._work.notify()

    def _count_log_bytes(self, size: int) -> None:
        """Raise LogLimitExceeded if logging ``size`` more bytes passes the limit."""
        limit = self._max_log_bytes
        if limit > 0 and self._log_bytes + size > limit:
            # Once: the task's own error report that follows must still fit.
            self._max_log_bytes = self._log_bytes + LIMIT_SLACK
            raise LogLimitExceeded(
                f"event log limit reached: {limit} bytes of events (METASTREAM_TASK_MAX_LOG_BYTES)"
            )
        self._log_bytes += size

    def record(self, **columns: Any) -> None:
        """Store extra task columns (``error``, ``exit_code``) with the next commit."""
        with self._lock:
            self._extra.update(columns)
            self._state_dirty = self._state_urgent = True
            self._work.notify()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything emitted so far is persisted and published."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._next_id - 1
            self._state_urgent = self._state_dirty
            while (
                self._written_id < target or self._state_dirty or self._row_written < self._version
            ) and self._error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._work.notify()
                if self._row_pending is not None:
                    self._row_urgent = True
                    self._rows.notify()
                self._progress.wait(min(remaining, 0.1))
            self._raise_if_failed()
            return True

    def stop_heartbeats(self) -> None:
        """Stop beating (used by the synthetic ``hang_after`` drill)."""
        with self._lock:
            self._beating = False

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the writer thread."""
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._stopping = True
                self._work.notify_all()
                self._progress.notify_all()
            self._thread.join(timeout)
            self._final_beat()
            with self._lock:
                self._rows.notify_all()  # the row writer may now finish
            self._row_thread.join(timeout)

    def _final_beat(self) -> None:
        """A last heartbeat, so the supervisor's metrics get this process's final counts."""
        if self._thread.is_alive() or not self._beating or self._error is not None:
            return  # the PUB socket is only ours once the writer thread is gone
        self._pub.publish(self.task_id, self._heartbeat())

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(
            task_id=self.task_id,
            last_event_id=self._written_id,
            pid=os.getpid(),
            sent_at=time.time(),
            stats=self.stats,
        )

    @property
    def last_event_id(self) -> int:
        return self._written_id

    def _state_due(self) -> bool:
        """A state change is published at most every STATE_INTERVAL, unless it is urgent."""
        return self._state_dirty and (self._state_urgent or time.monotonic() >= self._next_state)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"event log writer failed: {self._error}") from self._error

    # --- writing ------------------------------------------------------------------------

    def _take(self, *, events: bool, flush_state: bool = False) -> _Claim:
        """Claim the log and the PUB socket, and what to write with them (lock held)."""
        batch: list[Event] = []
        rows: list[tuple[int, bytes]] = []
        if events:
            batch, self._pending = self._pending, []
            rows, self._pending_rows = self._pending_rows, []
            self._progress.notify_all()  # emitters blocked on MAX_PENDING
        state = None
        extra: dict[str, Any] = {}
        urgent = flush_state or self._state_urgent
        if self._state_dirty and (flush_state or self._state_due()):
            state = msgspec.structs.replace(self._state)
            extra, self._extra = self._extra, {}
            self._state_dirty = self._state_urgent = False
            self._next_state = time.monotonic() + STATE_INTERVAL
        # One writer at a time keeps the batches in order and the PUB socket (not
        # thread-safe) to one thread.
        self._busy = True
        return _Claim(batch, rows, state, extra, urgent)

    def _write(self, claim: _Claim, *, beat: bool = False) -> None:
        """Commit and publish what :meth:`_take` claimed (and a heartbeat), then release."""
        try:
            self._commit(claim)
            if beat:
                self._pub.publish(self.task_id, self._heartbeat())
        except Exception as exc:  # the log is unusable: fail the task loudly, not silently
            with self._lock:
                self._error = exc
            raise RuntimeError(f"event log writer failed: {exc}") from exc
        finally:
            with self._lock:
                self._busy = False
                self._progress.notify_all()
                if self._pending or self._state_due():
                    self._work.notify()  # what queued meanwhile

    def _run(self) -> None:
        """The writer thread: what emitters leave when they pause, states, heartbeats."""
        next_beat = time.monotonic()
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    quiet = (
                        self._stopping
                        or not self._emitter_batches
                        or now - self._last_emit >= INLINE_AFTER
                    )
                    if not self._busy:
                        if self._stopping and not (self._pending or self._state_dirty):
                            return
                        if (self._pending and quiet) or self._state_due() or now >= next_beat:
                            break
                        if self._stopping and self._state_dirty:
                            break
                    # Woken by an emit into an empty queue, a writer finishing, or a deadline.
                    deadline = next_beat
                    if self._state_dirty:
                        deadline = min(deadline, self._next_state)
                    if self._pending and not self._busy:
                        deadline = min(deadline, self._last_emit + INLINE_AFTER)
                    self._work.wait(max(deadline - now, 0.0001))
                # Events only once the emitters pause: writing while they run would make
                # both wait for the GIL (see the module's docstring).
                claim = self._take(events=bool(self._pending) and quiet, flush_state=self._stopping)
                # Within the same claim: the PUB socket is never used by two threads.
                beat = self._beating and now >= next_beat
            try:
                self._write(claim, beat=beat)
            except RuntimeError:
                return  # recorded: emitters and flushers raise it
            if beat:
                next_beat = time.monotonic() + self._hb_interval

    def _commit(self, claim: _Claim) -> None:
        batch, rows, state, extra, urgent = claim
        # Events first: durable, then on the bus. The state write (shared task row) comes
        # after, so it never holds back the events of the batch it rides with.
        if batch:
            began = time.perf_counter()
            self._store.append_events(self.task_id, rows)
            self._count(len(batch), time.perf_counter() - began)
            self.stats.published += self._pub.publish_events(self.task_id, batch)
            with self._lock:
                self._written_id = batch[-1].event_id
                self._progress.notify_all()
        if state is None:
            return
        columns: dict[str, Any] = dict(extra)
        columns.update(
            progress=state.progress,
            current_agent=state.current_agent,
            last_message=state.last_message,
        )
        with self._lock:
            self._version += 1
            state.version = self._version
            state.last_event_id = self._written_id
            # Newest wins, but columns recorded earlier (an exit code) are kept.
            pending = self._row_pending or {}
            pending.update(columns, last_event_id=self._written_id, state_version=self._version)
            self._row_pending = pending
            self._row_urgent = self._row_urgent or urgent
            self._rows.notify()
        self._pub.publish(self.task_id, state)

    def _count(self, events: int, seconds: float) -> None:
        stats = self.stats
        if not stats.batches:
            stats.first_event_at = time.time()
        stats.batches += 1
        stats.events += events
        stats.write_seconds += seconds
        stats.write_buckets[bisect.bisect_left(WRITE_SECONDS_BOUNDS, seconds)] += 1
        stats.batch_buckets[bisect.bisect_left(BATCH_SIZE_BOUNDS, events)] += 1

    def _write_rows(self) -> None:
        due = 0.0  # when the next row may be written
        while True:
            with self._lock:
                while True:
                    if self._row_pending is not None:
                        wait = due - time.monotonic()
                        if wait <= 0 or self._row_urgent or self._stopping:
                            break
                        self._rows.wait(wait)  # newer states merge into the pending row
                    elif self._stopping and not self._thread.is_alive():
                        break
                    else:
                        self._rows.wait(0.5)
                row, self._row_pending = self._row_pending, None
                self._row_urgent = False
            if row is None:
                return
            due = time.monotonic() + ROW_INTERVAL
            try:
                self._store.save_state(self.task_id, row)
            except Exception as exc:  # the task row is unusable: fail loudly, like the log
                with self._lock:
                    self._error = exc
                    self._progress.notify_all()
                return
            with self._lock:
                self._row_written = row["state_version"]
                self._progress.notify_all()
