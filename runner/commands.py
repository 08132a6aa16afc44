"""The supervisor's commands: start, follow-up, resume and cancel (from gateways)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bus.messages import Reply
from core.clock import utcnow
from core.settings import Settings
from core.status import TaskStatus, TransitionError
from runner import nodes
from runner.metrics import SupervisorMetrics
from store import Store, TaskRow
from store.nodes import QUEUE_CHANNEL, Nodes
from store.runs import RunRow

if TYPE_CHECKING:
    from runner.policy import StopFrom
    from runner.running import Running
    from runner.workspace_share import WorkspaceShare

log = logging.getLogger("metastream.supervisor")


class Commands:
    """Mixin of :class:`runner.supervisor.Supervisor`: what a gateway may ask of it."""

    cfg: Settings
    store: Store
    node: str
    running: dict[str, Running]
    claims: Nodes | None
    shares: WorkspaceShare
    metrics: SupervisorMetrics
    _background: set[asyncio.Task[Any]]
    _db: Callable[..., Any]
    _lock: Callable[[str], asyncio.Lock]
    _publish: Callable[[TaskRow], None]
    _run_update: Callable[..., Awaitable[RunRow | None]]

    async def pump(self) -> None:
        raise NotImplementedError

    async def stop_task(self, run: Running, status: TaskStatus, message: str, how: StopFrom) -> str:
        raise NotImplementedError  # runner.checks.Checks (before this class in the MRO)

    async def start(self, task_id: str) -> Reply:
        async with self._lock(task_id):
            row = await self._db(self.store.get_task, task_id)
            if row is None:
                return Reply(ok=False, error="Task not found")
            if row.status in (TaskStatus.RUNNING, TaskStatus.QUEUED):
                return Reply(ok=True, status=row.status)
            # COMPLETED and CANCELLED leave only through a follow-up or a resume.
            if row.status not in (TaskStatus.PENDING, TaskStatus.FAILED):
                return Reply(ok=False, status=row.status, error=f"Task already {row.status}")
            kind = "start" if row.status == TaskStatus.PENDING else "retry"
            reply = await self._queue(row, kind, row.requirement)
        return self._queued(reply)

    async def follow_up(self, task_id: str, requirement: str) -> Reply:
        """A new run of a COMPLETED task, on its workspace (MetaGPT incremental mode)."""
        async with self._lock(task_id):
            row = await self._db(self.store.get_task, task_id)
            if row is None:
                return Reply(ok=False, error="Task not found")
            if row.status != TaskStatus.COMPLETED:
                return Reply(
                    ok=False,
                    status=row.status,
                    error=f"Task is {row.status}: a follow-up starts only once the task is "
                    "COMPLETED (wait for the current run to end"
                    + (", or resume it first)" if row.status.terminal else ")"),
                )
            reply = await self._queue(row, "follow_up", requirement)
        return self._queued(reply)

    async def resume(self, task_id: str) -> Reply:
        """Continue a CANCELLED or FAILED task from the team serialized in its workspace."""
        async with self._lock(task_id):
            row = await self._db(self.store.get_task, task_id)
            if row is None:
                return Reply(ok=False, error="Task not found")
            if row.status not in (TaskStatus.CANCELLED, TaskStatus.FAILED):
                return Reply(
                    ok=False,
                    status=row.status,
                    error=f"Task is {row.status}: only a CANCELLED or FAILED task can be resumed",
                )
            # The workspace the next run gets: this disk's, or the shared store's (several
            # nodes, when this disk's is missing or older: runner/workspace_share.py).
            if not await asyncio.to_thread(self.shares.can_resume, task_id):
                return Reply(
                    ok=False,
                    status=row.status,
                    error="Nothing to resume: no serialized team in the task's workspace (the "
                    "run ended before its first round finished, or was not a MetaGPT run)"
                    + ("; run it again with POST /run" if row.status == "FAILED" else ""),
                )
            last = await self._db(self.store.runs.latest, task_id)
            requirement = last.requirement if last is not None else row.requirement
            reply = await self._queue(row, "resume", requirement)
        return self._queued(reply)

    async def _queue(self, row: TaskRow, kind: str, requirement: str) -> Reply | None:
        """Queue the task's next run and add its run row; a Reply if another writer won."""
        try:
            queued = await self._db(
                self.store.transition,
                row.id,
                TaskStatus.QUEUED,
                (row.status,),
                queued_at=utcnow(),
                # On PostgreSQL no node yet: whichever supervisor has a free slot claims it.
                node=None if self.claims is not None else self.node,
                cancel_request=None,
                progress=0.0,
                current_agent=None,
                last_message="Waiting for a free slot",
                completed_at=None,
                exit_code=None,
                error=None,
            )
        except TransitionError as exc:  # someone else moved it meanwhile
            return Reply(ok=True, status=exc.got)
        await self._db(self.store.runs.add, row.id, kind, requirement, "QUEUED", utcnow())
        self._publish(queued)
        if self.claims is not None:  # wake the other nodes: one of them may be idle
            await self._db(self.claims.notify, QUEUE_CHANNEL)
        return None

    def _queued(self, early: Reply | None) -> Reply:
        """Admission is recorded: answer now and start it in the background. Waiting for the
        pump here made a burst of starts queue behind each other's spawns (cold ones take
        long while the zygote loads) and clients gave up after the gateway's 5 s."""
        if early is not None:
            return early
        self._pump_soon()
        return Reply(ok=True, status=TaskStatus.QUEUED)

    def _pump_soon(self) -> None:
        task = asyncio.create_task(self.pump())
        self._background.add(task)
        task.add_done_callback(self._pumped)

    def _pumped(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("starting queued tasks failed", exc_info=task.exception())

    async def cancel(self, task_id: str, reason: str) -> Reply:
        run = self.running.get(task_id)
        if run is not None:
            await self.stop_task(run, TaskStatus.CANCELLED, reason, how="ask")
            row = await self._db(self.store.get_task, task_id)
            return Reply(ok=True, status=row.status if row else None)
        async with self._lock(task_id):
            row = await self._db(self.store.get_task, task_id)
            if row is None:
                return Reply(ok=False, error="Task not found")
            if row.status.terminal:
                return Reply(ok=True, status=row.status)
            try:
                ended = await self._db(
                    self.store.transition,
                    task_id,
                    TaskStatus.CANCELLED,
                    (TaskStatus.PENDING, TaskStatus.QUEUED),
                    completed_at=utcnow(),
                    last_message=reason,
                )
            except TransitionError:
                pass  # it became RUNNING while we looked
            else:
                self._publish(ended)
                self.metrics.ended(task_id, ended.status)
                return Reply(ok=True, status=ended.status)
        # It became RUNNING while we looked: stop the process, wherever it runs.
        run = self.running.get(task_id)
        if run is not None:
            await self.stop_task(run, TaskStatus.CANCELLED, reason, how="ask")
        elif self.claims is not None:
            return await self._cancel_elsewhere(task_id, reason)
        row = await self._db(self.store.get_task, task_id)
        return Reply(ok=True, status=row.status if row else None)

    async def _cancel_elsewhere(self, task_id: str, reason: str) -> Reply:
        """Another node runs it: ask that node through the database, wait for its end there.

        The owner acts on the NOTIFY (runner/nodes.py) and writes the final row only once
        the task's process tree is gone, so the answer comes after the stop, as locally.
        """
        assert self.claims is not None
        await self._db(self.claims.request_cancel, task_id, reason)
        budget = self.cfg.stop_ask_timeout + self.cfg.stop_term_timeout + 1.0
        status = await nodes.wait_ended(self.store, task_id, budget)
        return Reply(ok=True, status=status)

    async def ended_elsewhere(self, row: TaskRow) -> None:
        """A lost node's task we ended (runner/nodes.py): its run row, the bus, metrics."""
        await self._run_update(
            row.id, status=row.status.value, last_event_id=row.last_event_id,
            ended_at=row.completed_at,
        )  # fmt: skip
        self._publish(row)
        self.metrics.ended(row.id, row.status, row.last_event_id)
