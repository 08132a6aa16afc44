"""Who writes a batch of events, and when: the emitters (SQLite) or the writer thread (PostgreSQL).

Why the emitters write their own batches on a local database: a separate writer thread,
committing while the workload keeps emitting, waits for the GIL each time SQLite or ZeroMQ
hands it back (every statement, every send), up to the interpreter's 5 ms switch interval: a
4,000-event commit took 90 ms, 5-9 us per event instead of about 1.5.

On a server database (PostgreSQL) a commit is a round trip of a millisecond or more, during
which the GIL is free: there a run's batches are committed by the writer thread while the
emitters go on (group commit), and emitters write only paced events themselves. An emitter
writing each batch itself would stop emitting for every commit, and each next event would
look paced: one commit per event.
"""

from __future__ import annotations

from typing import Protocol

INLINE_AFTER = 0.0002  # an event this long after the previous one is written by its emitter
# In a run of events, the emitter that finds the oldest pending one this old writes the batch.
MAX_DELAY = 0.0005


class Pacing(Protocol):
    """The outbox's choice of writer for the events of a run (paced events: always the emitter)."""

    def emitter_batch_due(self, now: float, oldest: float) -> bool:
        """Whether an emitter in a run writes the pending batch itself."""
        ...

    def writer_may_take(self, now: float, last_emit: float) -> bool:
        """Whether the writer thread may take the pending events now."""
        ...

    def pause_starts_after_commit(self) -> bool:
        """Whether the pause before the next event is counted from the end of an emitter's write."""
        ...


class EmitterBatches:
    """Local commits (SQLite): a run's emitters write its batches; the writer thread its tail."""

    def emitter_batch_due(self, now: float, oldest: float) -> bool:
        return now - oldest >= MAX_DELAY

    def writer_may_take(self, now: float, last_emit: float) -> bool:
        # Events only once the emitters pause: writing while they run would make both wait
        # for the GIL.
        return now - last_emit >= INLINE_AFTER

    def pause_starts_after_commit(self) -> bool:
        return False


class GroupCommit:
    """Server commits (PostgreSQL): the writer thread commits a run's batches while it goes on."""

    def emitter_batch_due(self, now: float, oldest: float) -> bool:
        return False

    def writer_may_take(self, now: float, last_emit: float) -> bool:
        return True

    def pause_starts_after_commit(self) -> bool:
        # A commit is a round trip: the pause before the next event starts after it, else
        # every event after an emitter's commit would look paced (one commit per event).
        return True


def for_store(local_commits: bool) -> Pacing:
    """The pacing for a store whose commits are local (SQLite file) or not (PostgreSQL)."""
    return EmitterBatches() if local_commits else GroupCommit()
