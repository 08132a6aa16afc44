"""Group-commit outbox: every event is in the log before it is on the bus.

Workloads call :meth:`Outbox.emit` and :meth:`Outbox.set_state` from any thread. Events are
written and published by the thread that emits them whenever it can: at once after a pause
(~15 us; lowest latency), and in a fast run as one batch once the oldest pending event has
waited ``MAX_DELAY`` (highest throughput). A writer thread commits what a run leaves pending
when it pauses, publishes state changes, and sends the heartbeats, so they keep coming while a
workload blocks its own event loop.

The parts, each a module of its own: who writes a run's batches (``pacing``: the emitters on
SQLite, the writer thread on PostgreSQL), state throttling (``state_throttle``), heartbeats
(``heartbeat``), the throttled task-row writer thread (``task_row``) and the counters
(``accounting``). This module holds the lock they share and the writing itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from bus.client import Publisher
from bus.messages import Event, State, bus_encoder, event_data_json, utcnow
from runner.task import pacing
from runner.task.accounting import LogBudget, LogLimitExceeded, count_batch, new_stats
from runner.task.heartbeat import Beats
from runner.task.pacing import INLINE_AFTER
from runner.task.state_throttle import StateThrottle
from runner.task.task_row import TaskRowWriter

__all__ = ["MAX_PENDING", "LogLimitExceeded", "Outbox", "TaskStore"]


class TaskStore(Protocol):
    """Where the outbox persists: the task's own log (runner.task.spec.OwnLog) or a Store."""

    @property
    def local_commits(self) -> bool: ...

    def open_events(self, task_id: str) -> None: ...

    def append_events(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None: ...

    def save_state(self, task_id: str, columns: Mapping[str, Any]) -> None: ...


MAX_PENDING = 20_000  # emitters wait beyond this: memory stays bounded if the log is slow


class _Claim(NamedTuple):
    """What one writer took to commit and publish."""

    batch: list[Event]
    rows: list[tuple[int, bytes]]  # the batch as log rows
    bodies: list[bytes]  # the batch as bus bodies (logged beside the rows, then published)
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
        self._budget = LogBudget(max_log_bytes)
        self.cancelled = threading.Event()
        self._store = store
        self._pub = publisher
        # One lock, three wake-up lists: the writer thread waits for work, the row thread
        # for a row, emitters and flushers for progress. Kept apart so that an event
        # written by its emitter does not wake the idle writer thread for nothing.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._pending: list[Event] = []
        # Each pending event as its log row, encoded by the emitter: the writer thread is
        # the pipeline's narrow part, the emitters mostly wait for it.
        self._pending_rows: list[tuple[int, bytes]] = []
        # ... and as its bus body: published, and logged too, so that a binary client's replay
        # forwards these bytes instead of converting the JSON row (gateway/logreader.py).
        self._pending_bodies: list[bytes] = []
        self._next_id = first_event_id
        self._written_id = first_event_id - 1
        self._state = StateThrottle(state)
        self._stopping = False
        self._error: BaseException | None = None
        # Set while a thread writes the log and publishes (the writer, or an emitter writing
        # its own event): one at a time, which keeps batches in order and the PUB socket
        # (not thread-safe) to one thread.
        self._busy = False
        self._last_emit = 0.0
        self._oldest = 0.0  # when the oldest pending event was emitted
        self._pacing = pacing.for_store(store.local_commits)
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._rows = TaskRowWriter(
            lambda row: store.save_state(task_id, row),
            self._lock,
            self._progress,
            state.version,
            self._thread.is_alive,
            self._fail,
        )
        # What the supervisor exports for this process (it runs no metrics server of its own):
        # updated by whoever holds ``_busy``, sent with every heartbeat.
        self.stats = new_stats()
        self._beats = Beats(task_id, heartbeat_interval, self.stats)

    def start(self) -> None:
        # Creating the log file takes milliseconds: before the first event, not in its commit.
        self._store.open_events(self.task_id)
        self._beats.next_at = time.monotonic()
        self._thread.start()
        self._rows.start()

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
            body = bus_encoder.encode(ev)
            self._budget.spend(len(row) + len(body))  # both are on disk
            self._next_id += 1
            now = time.monotonic()
            if not self._pending:
                self._oldest = now
            self._pending.append(ev)
            self._pending_rows.append((event_id, row))
            self._pending_bodies.append(body)
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
            batch_due = self._pacing.emitter_batch_due(now, self._oldest)
            mine = not self._busy and (paced or batch_due)
            if mine:
                claim = self._take(events=True)
                # A beat that is due goes with it: an emitter running flat out holds the
                # log almost always, and the writer thread, which otherwise sends the beats,
                # then seldom got its turn (a 200,000-event run was killed as unresponsive).
                beat = self._beats.due(now)
            elif len(self._pending) == 1:
                self._work.notify()
        if mine:
            self._write(claim, beat=beat)
            if self._pacing.pause_starts_after_commit():
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
            if self._state.update(progress, current_agent, last_message):
                self._work.notify()

    def record(self, **columns: Any) -> None:
        """Store extra task columns (``error``, ``exit_code``) with the next commit."""
        with self._lock:
            self._state.record(columns)
            self._work.notify()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything emitted so far is persisted and published."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._next_id - 1
            self._state.hurry()
            while (
                self._written_id < target or self._state.dirty or self._rows.behind
            ) and self._error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._work.notify()
                self._rows.hurry()
                self._progress.wait(min(remaining, 0.1))
            self._raise_if_failed()
            return True

    def stop_heartbeats(self) -> None:
        """Stop beating (used by the synthetic ``hang_after`` drill)."""
        with self._lock:
            self._beats.beating = False

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the writer thread."""
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._stopping = self._rows.stopping = True
                self._work.notify_all()
                self._progress.notify_all()
            self._thread.join(timeout)
            self._final_beat()
            self._rows.finish(timeout)  # the row writer may now finish

    def _final_beat(self) -> None:
        """A last heartbeat, so the supervisor's metrics get this process's final counts."""
        if self._thread.is_alive() or not self._beats.beating or self._error is not None:
            return  # the PUB socket is only ours once the writer thread is gone
        self._pub.publish(self.task_id, self._beats.message(self._written_id))

    @property
    def last_event_id(self) -> int:
        return self._written_id

    def _fail(self, exc: BaseException) -> None:
        self._error = exc  # (lock held) emitters and flushers raise it

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"event log writer failed: {self._error}") from self._error

    # --- writing ------------------------------------------------------------------------

    def _take(self, *, events: bool, flush_state: bool = False) -> _Claim:
        """Claim the log and the PUB socket, and what to write with them (lock held)."""
        batch: list[Event] = []
        rows: list[tuple[int, bytes]] = []
        bodies: list[bytes] = []
        if events:
            batch, self._pending = self._pending, []
            rows, self._pending_rows = self._pending_rows, []
            bodies, self._pending_bodies = self._pending_bodies, []
            self._progress.notify_all()  # emitters blocked on MAX_PENDING
        state, extra, urgent = self._state.take(flush_state)
        # One writer at a time keeps the batches in order and the PUB socket (not
        # thread-safe) to one thread.
        self._busy = True
        return _Claim(batch, rows, bodies, state, extra, urgent)

    def _write(self, claim: _Claim, *, beat: bool = False) -> None:
        """Commit and publish what :meth:`_take` claimed (and a heartbeat), then release."""
        try:
            self._commit(claim)
            if beat:
                self._pub.publish(self.task_id, self._beats.message(self._written_id))
                self._beats.sent()  # (while the claim is held: no second thread sends it too)
        except Exception as exc:  # the log is unusable: fail the task loudly, not silently
            with self._lock:
                self._error = exc
            raise RuntimeError(f"event log writer failed: {exc}") from exc
        finally:
            with self._lock:
                self._busy = False
                self._progress.notify_all()
                if self._pending or self._state.due():
                    self._work.notify()  # what queued meanwhile

    def _run(self) -> None:
        """The writer thread: what emitters leave when they pause, states, heartbeats."""
        beats, state = self._beats, self._state
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    quiet = self._stopping or self._pacing.writer_may_take(now, self._last_emit)
                    if not self._busy:
                        if self._stopping and not (self._pending or state.dirty):
                            return
                        if (self._pending and quiet) or state.due() or beats.due(now):
                            break
                        if self._stopping and state.dirty:
                            break
                    # Woken by an emit into an empty queue, a writer finishing, or a deadline.
                    deadline = beats.wake_at(now)
                    if state.dirty:
                        deadline = min(deadline, state.next_at)
                    if self._pending and not self._busy:
                        deadline = min(deadline, self._last_emit + INLINE_AFTER)
                    self._work.wait(max(deadline - now, 0.0001))
                # Events only when the pacing allows (see ``pacing``).
                claim = self._take(events=bool(self._pending) and quiet, flush_state=self._stopping)
                # Within the same claim: the PUB socket is never used by two threads.
                beat = beats.due(now)
            try:
                self._write(claim, beat=beat)
            except RuntimeError:
                return  # recorded: emitters and flushers raise it

    def _commit(self, claim: _Claim) -> None:
        batch, rows, bodies, state, extra, urgent = claim
        # Events first: durable, then on the bus. The state write (shared task row) comes
        # after, so it never holds back the events of the batch it rides with.
        if batch:
            began = time.perf_counter()
            self._store.append_events(self.task_id, rows, bodies)
            count_batch(self.stats, len(batch), time.perf_counter() - began, time.time())
            self.stats.published += self._pub.publish_bodies(self.task_id, bodies)
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
            state.version = self._rows.queue(columns, self._written_id, urgent)
            state.last_event_id = self._written_id
        self._pub.publish(self.task_id, state)
