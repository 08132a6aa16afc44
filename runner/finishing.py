"""How a task's run ends: one finish path, from its process's exit to its published final row.

Whatever ended the process (itself, a stop sequence, a lost node), :meth:`Finishing._watch`
releases what the run held, reads the task's own word from its log (exit code, error, last
state version), decides the outcome (``runner.outcome``) and :meth:`Finishing._finish` writes
the final row, records it on the run and publishes it. Recovery after a restart ends the runs
it finds dead through the same ``_finish``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from core.clock import utcnow
from core.settings import Settings
from core.status import TaskStatus, TransitionError
from runner import sandbox
from runner.metrics import SupervisorMetrics
from runner.outcome import outcome
from runner.policy import DisconnectPolicy, HeartbeatPolicy
from runner.running import Running
from runner.workspace_share import WorkspaceShare
from store import Store, StoreError, TaskRow
from store.eventlog import EventLogUnreadable
from store.runs import RunRow
from store.taskroles import TaskRoles

log = logging.getLogger("metastream.supervisor")
MAX_VERSION = 2**53  # a task's own word on its state version is clamped below this
MAX_ERROR = 2000  # characters of the task's own error text kept in its row


def own_word(told: dict[str, Any]) -> tuple[int | None, str | None]:
    """The exit code and error a task recorded in its log (anything else: not said)."""
    exit_told, error = told.get("exit_code"), told.get("error")
    return (
        exit_told if isinstance(exit_told, int) else None,
        error[:MAX_ERROR] if isinstance(error, str) and error else None,
    )


class Finishing:
    """Mixin of :class:`runner.supervisor.Supervisor`: the end of every run it started."""

    cfg: Settings
    store: Store
    roles: TaskRoles | None
    running: dict[str, Running]
    heartbeats: HeartbeatPolicy
    disconnects: DisconnectPolicy
    uids: sandbox.UidPool
    metrics: SupervisorMetrics
    shares: WorkspaceShare
    on_ended: Callable[[str], None]
    _db: Callable[..., Any]
    _publish: Callable[[TaskRow], None]

    async def pump(self) -> None:
        raise NotImplementedError

    async def _watch(self, run: Running) -> None:
        await run.child.wait()
        task_id = run.task_id
        if run.stopping is None:
            # Children it left behind die with it.
            await asyncio.to_thread(run.child.reap_leftovers)
        self.heartbeats.forget(task_id)
        self.disconnects.forget(task_id)
        await self._db(sandbox.release, run.plan, run.dirs)
        self.uids.release(run.plan.uid)
        async with run.row_lock:
            run.finished = True  # no progress row after this: the final one follows
        row = await self._db(self.store.get_task, task_id)
        # Its database role, unless its run was taken over (several nodes): the role is named
        # after the task, so the run that took over uses it now.
        ours = row is None or run.epoch is None or row.epoch == run.epoch
        if ours:
            await self._revoke_role(task_id)
        # The task's own word about itself (exit code, error, last state version), from its log.
        told = await self._db(self.store.task_outcome, task_id)
        await self._settle_version(run, row, told)
        exit_told, error = own_word(told)
        if run.stop_reason is not None:
            status, message = run.stop_reason
        else:
            status, message = outcome(
                run.child.returncode,
                exit_told,
                error,
                lost=False,
                unknown_exit=run.child.unknown_exit,
            )
        # A status nobody could read (adopted): the code the task recorded stands in.
        code = run.child.returncode if run.child.returncode is not None else exit_told
        # Several nodes: its files into the store before its final state, so that every
        # gateway serves them once a client sees the end (not a taken-over run's stale ones).
        await self.shares.at_end(task_id, run.epoch, ours)
        await self._finish(task_id, status, message, code, error=error, epoch=run.epoch)
        # Only now is its slot free: the store no longer shows it RUNNING.
        self.running.pop(task_id, None)
        self.on_ended(task_id)
        await self.pump()

    async def _settle_version(
        self, run: Running, row: TaskRow | None, told: dict[str, Any]
    ) -> None:
        """Write the task's last progress, versioned past every state it published.

        The final state's version must exceed the task's own, even one still on its way to
        us: the task recorded its last version in its log.
        """
        if row is None:
            return
        version = told.get("state_version")
        version = version if isinstance(version, int) and 0 <= version < MAX_VERSION else 0
        version = max(row.state_version, run.reported_version, version)
        columns = dict(run.pending_row or {})
        if version > row.state_version or columns:
            columns["state_version"] = version
            await self._db(self.store.save_state, run.task_id, columns, run.epoch)

    async def _finish(
        self,
        task_id: str,
        status: TaskStatus,
        message: str,
        exit_code: int | None,
        error: str | None = None,
        epoch: int | None = None,
    ) -> TaskRow | None:
        """The one way a RUNNING task ends: its final row written, then published.

        ``epoch`` (several nodes): only while the run is still ours; one taken over by
        another node was ended there.
        """
        fields: dict[str, Any] = dict(completed_at=utcnow(), last_message=message, pid=None)
        try:
            # Exact, from the log: the final state tells clients which events precede it.
            fields["last_event_id"] = await self._db(self.store.last_event_id, task_id)
        except EventLogUnreadable as exc:  # the task damaged its own log: it still ends
            log.warning("task %s: %s", task_id, exc)
        if exit_code is not None:  # unknown (adopted, lost): keep what the task recorded
            fields["exit_code"] = exit_code
        if error is not None:  # the task's own account of its failure (from its log)
            fields["error"] = error
        if status == TaskStatus.COMPLETED:
            fields["progress"] = 1.0
        try:
            ended = await self._db(
                self.store.transition,
                task_id,
                status,
                (TaskStatus.RUNNING,),
                at_epoch=epoch,
                **fields,
            )
        except TransitionError as exc:
            log.warning("task %s not ended %s: %s", task_id, status, exc)
            return None
        await self._run_update(
            task_id,
            status=status.value,
            last_event_id=fields["last_event_id"],
            ended_at=fields["completed_at"],
        )
        self._publish(ended)
        await self._first_event_metric(task_id)
        self.metrics.ended(task_id, status, fields.get("last_event_id", ended.last_event_id))
        log.info("task %s %s: %s", task_id, status, message)
        return ended

    async def _first_event_metric(self, task_id: str) -> None:
        """A task that ended before a heartbeat told its first event's time: read it."""
        first = self.metrics.awaiting_first_event(task_id)
        if first is not None:
            try:
                rows = await self._db(self.store.read_events, task_id, first - 1, 1)
                if rows:
                    stamp = msgspec.json.decode(rows[0][1])["timestamp"]
                    self.metrics.first_event(task_id, stamp)
            except (EventLogUnreadable, msgspec.DecodeError, KeyError, TypeError) as exc:
                # The log is the task's own: a damaged one costs this metric, nothing more.
                log.warning("task %s: no first-event time: %s", task_id, exc)

    async def _run_update(self, task_id: str, **values: Any) -> RunRow | None:
        """Record on the task's current run (tasks created before runs existed have none)."""
        run = await self._db(self.store.runs.latest, task_id)
        if run is not None:
            await self._db(self.store.runs.update, task_id, run.run_no, **values)
        return run

    async def _revoke_role(self, task_id: str) -> None:
        """Drop the ended task's database role (a failure is left to the next start's sweep)."""
        if self.roles is None:
            return
        try:
            await self._db(self.roles.revoke, task_id)
        except StoreError as exc:
            log.warning("task %s: its database role stays until the next start: %s", task_id, exc)
