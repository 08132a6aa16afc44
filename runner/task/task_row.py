"""The throttled task-row writer: a thread that writes the task's row at most every ROW_INTERVAL.

The task row is what REST readers see; live clients have the states. A row write per state
made 50 busy tasks 200 writes/s on the shared database (one write lock when embedded), and
that write (~1 ms) must not hold back the next events: it has a thread of its own. Newer
states merge into the pending row; exit codes, errors, flushes and the end are written at once.

Versions are counted here; the supervisor only writes the row before the task starts and after
it ends, so ours stay in order with its.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

ROW_INTERVAL = 1.0


class TaskRowWriter:
    """Merges the task's row changes and writes them from its own thread.

    Shares the outbox's lock: :meth:`queue`, :meth:`hurry` and :attr:`behind` are called with
    it held; ``progress`` (a condition on that lock) is notified after each write.
    """

    def __init__(
        self,
        save: Callable[[Mapping[str, Any]], None],
        lock: threading.Lock,
        progress: threading.Condition,
        version: int,
        writer_alive: Callable[[], bool],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._save = save
        self._progress = progress
        self._writer_alive = writer_alive  # the row writer outlives the event writer
        self._on_error = on_error  # called with the lock held
        self._wake = threading.Condition(lock)
        self.version = version
        self.written = version
        self._pending: dict[str, Any] | None = None
        self._urgent = False
        self.stopping = False  # set with the lock held; then :meth:`finish` once the writer ends
        self._thread = threading.Thread(target=self._run, name="task-row", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def queue(self, columns: Mapping[str, Any], last_event_id: int, urgent: bool) -> int:
        """Merge a state's columns into the pending row; returns the state's version."""
        self.version += 1
        # Newest wins, but columns recorded earlier (an exit code) are kept.
        pending = self._pending or {}
        pending.update(columns, last_event_id=last_event_id, state_version=self.version)
        self._pending = pending
        self._urgent = self._urgent or urgent
        self._wake.notify()
        return self.version

    @property
    def behind(self) -> bool:
        return self.written < self.version

    def hurry(self) -> None:
        """Write the pending row now, not after the interval (a flush)."""
        if self._pending is not None:
            self._urgent = True
            self._wake.notify()

    def finish(self, timeout: float) -> None:
        """Write what is pending and end the thread (after the event writer has ended)."""
        with self._wake:
            self._wake.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        due = 0.0  # when the next row may be written
        while True:
            with self._wake:
                while True:
                    if self._pending is not None:
                        wait = due - time.monotonic()
                        if wait <= 0 or self._urgent or self.stopping:
                            break
                        self._wake.wait(wait)  # newer states merge into the pending row
                    elif self.stopping and not self._writer_alive():
                        break
                    else:
                        self._wake.wait(0.5)
                row, self._pending = self._pending, None
                self._urgent = False
            if row is None:
                return
            due = time.monotonic() + ROW_INTERVAL
            try:
                self._save(row)
            except Exception as exc:  # the task row is unusable: fail loudly, like the log
                with self._wake:
                    self._on_error(exc)
                    self._progress.notify_all()
                return
            with self._wake:
                self.written = row["state_version"]
                self._progress.notify_all()
