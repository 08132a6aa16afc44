"""The supervisor: one OS process per task, every lifecycle change persisted and published."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bus.client import Publisher
from bus.messages import (
    ProcessLifecycle,
    Readopted,
    Spawned,
    process_topic,
    state_of,
)
from core.clock import utcnow
from core.ids import SYSTEM_TOPIC_PREFIX
from core.metrics import Registry
from core.options import TaskOptions
from core.settings import Settings
from core.status import TaskStatus, TransitionError
from runner import process, sandbox
from runner.checks import Checks
from runner.commands import Commands
from runner.finishing import Finishing, own_word
from runner.forkserver import ForkServer
from runner.launchers import AdoptingLauncher, LaunchUnavailable, TaskLaunch
from runner.metrics import SupervisorMetrics
from runner.outcome import outcome
from runner.policy import Admission, DisconnectPolicy, HeartbeatPolicy
from runner.running import Progress, Running
from runner.spawning import Spawning
from runner.task import spec as task_spec
from runner.workspace_share import WorkspaceShare
from store import Store, StoreError, TaskRow
from store.dburl import is_sqlite
from store.taskroles import TaskRoles

log = logging.getLogger("metastream.supervisor")
T = TypeVar("T")

STARTUP_GRACE = 5.0  # to start the interpreter and send a first beat


class Supervisor(Checks, Finishing, Progress, Commands, Spawning):
    """Starts, watches and stops task processes on this node."""

    def __init__(
        self,
        cfg: Settings,
        store: Store,
        publisher: Publisher,
        node: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Registry | None = None,
        bus_master: bytes | None = None,
        roles: TaskRoles | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        # On PostgreSQL, each task's own database role (store.taskroles), prepared by the
        # caller; None: SQLite (each task has its own log file) or METASTREAM_DB_TASK_ROLES=0.
        self.roles = roles
        self.pub = publisher
        self.node = node or cfg.node or socket.gethostname()
        self.running: dict[str, Running] = {}
        self.admission = Admission(cfg.max_running)
        self.heartbeats = HeartbeatPolicy(
            cfg.heartbeat_timeout, STARTUP_GRACE, clock, beacon_every=cfg.heartbeat_interval / 2
        )
        self.disconnects = DisconnectPolicy(clock)
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._pump_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        # Set once shutdown begins: slots freed by stopping tasks must not admit queued ones
        # (they would be started only to be killed, and lost with no record).
        self.closing = False
        self.forkserver: ForkServer | None = None  # the warm path, once start_forkserver ran
        self._zygote_restarts = 0
        self._bus_master = bus_master  # each task gets its own key from it, never the master
        self.uids = sandbox.UidPool(cfg.sandbox_uid_base, cfg.sandbox_uid_count)
        self._read_only: list[str] | None = None
        # Several nodes on PostgreSQL (runner/nodes.py); None on SQLite: one node, no claims.
        self.claims = store.nodes
        self.shares = WorkspaceShare(cfg, store, self.node)  # workspaces across nodes
        self.on_started: Callable[[str], None] = lambda _tid: None
        self.on_ended: Callable[[str], None] = lambda _tid: None
        self.metrics = SupervisorMetrics(metrics or Registry(enabled=False), self.node)
        self.metrics.gauges(self._gauges)

    @property
    def beacon_topic(self) -> bytes:
        return SYSTEM_TOPIC_PREFIX + b"supervisor/" + self.node.encode()

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _lock(self, task_id: str) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    def _publish(self, row: TaskRow) -> None:
        self.pub.publish(row.id, state_of(row))

    def _announce(self, msg: ProcessLifecycle) -> None:
        """Publish a process lifecycle event on ``_sys/process/<kind>`` (docs/subscribers.md)."""
        self.pub.publish_system(process_topic(msg), msg)

    # --- admission and process lifecycle -------------------------------------------------

    async def pump(self) -> None:
        """Start queued tasks while slots are free, oldest first."""
        async with self._pump_lock:
            if self.closing:
                return
            free = self.admission.free_slots(len(self.running))
            if free == 0:
                return
            queued = await self._db(self.store.tasks_with_status, (TaskStatus.QUEUED,), self.node)
            # Claim only as many as we have slots for: the rest stay for an idle node.
            if (
                self.claims is not None
                and len(queued) < free
                and len(await self._db(self.claims.claim, self.node, free - len(queued))) > 0
            ):
                queued = await self._db(
                    self.store.tasks_with_status, (TaskStatus.QUEUED,), self.node
                )
            for row in queued[:free]:
                if self.closing:
                    return
                await self._launch(row)

    async def _launch(self, row: TaskRow) -> None:
        task_id = row.id
        # RUNNING is recorded before the process exists, so the task never reads an older status.
        try:
            started = await self._db(
                self.store.transition,
                task_id,
                TaskStatus.RUNNING,
                at_epoch=row.epoch,  # released meanwhile (we were declared lost): not ours
                started_at=utcnow(),
                last_message="Task process starting",
                run_count=row.run_count + 1,
            )
        except TransitionError:
            return  # cancelled while queued, or released to other nodes
        epoch = row.epoch if self.claims is not None else None
        this_run = await self._run_update(
            task_id,
            status="RUNNING",
            started_at=started.started_at,
            first_event_id=await self._db(self.store.last_event_id, task_id) + 1,
        )
        workspace = self.cfg.task_dir(task_id)
        plan, dirs = sandbox.Plan(mode="off"), list[Path]()
        try:
            if _wants_test_hook(row.options) and not self.cfg.test_hooks:
                raise sandbox.SandboxError(
                    "synthetic.run_python is a test hook; the supervisor refuses it unless "
                    "METASTREAM_TEST_HOOKS=1 (tests only)"
                )
            # Several nodes: the workspace as the store has it, if ours is missing or older.
            run_no = this_run.run_no if this_run is not None else 1
            await self.shares.before_launch(task_id, epoch, run_no)
            plan, dirs = self._plan(task_id)
            spec = task_spec.TaskSpec(
                requirement=row.requirement,
                test_mode=row.test_mode,
                options=row.options,
                last_event_id=row.last_event_id,
                state=state_of(started),
                test_hooks=self.cfg.test_hooks,
                # What to run: the run row this supervisor wrote (a task stored before runs
                # existed has none: its first run).
                run_no=run_no,
                run_kind=this_run.kind if this_run is not None else "start",
                run_requirement=this_run.requirement if this_run else row.requirement,
                epoch=epoch,
            )
            spec.db_url = await self._db(self._task_db_url, task_id)
            spec_path = await self._db(self._prepare, plan, dirs, spec)
            needs_llm = not row.test_mode and row.options.get("synthetic") is None
            child = await self._spawn(task_id, workspace, plan, spec_path, needs_llm)
        except (OSError, sandbox.SandboxError, StoreError) as exc:
            await self._db(sandbox.release, plan, dirs)
            self.uids.release(plan.uid)
            await self._revoke_role(task_id)
            await self._finish(
                task_id,
                TaskStatus.FAILED,
                f"Could not start the task process: {exc}",
                None,
                epoch=epoch,
            )
            return
        await self._db(self.store.set_process, task_id, child.pid, child.create_time)
        self._announce(
            Spawned(task_id=task_id, pid=child.pid, node=self.node, at=utcnow(), warm=child.warm)
        )
        run = self._track(task_id, child, TaskOptions.of(row.options))
        run.plan, run.dirs, run.reported_version = plan, dirs, started.state_version
        run.epoch = epoch
        self.metrics.started(task_id, child.kind, row.queued_at, row.last_event_id + 1)
        self._publish(started)

    def _track(self, task_id: str, child: process.TaskProcess, options: TaskOptions) -> Running:
        run = Running(task_id, child, options)
        run.started = self._clock()
        self.running[task_id] = run
        self.heartbeats.started(task_id)
        self.on_started(task_id)
        run.watcher = asyncio.create_task(self._watch(run))
        return run

    def _task_db_url(self, task_id: str) -> str:
        """The database URL the task gets in its spec ("" for its own SQLite log file)."""
        if is_sqlite(self.cfg.db_url):
            return ""
        if self.roles is None:  # METASTREAM_DB_TASK_ROLES=0: the stack's own (unsafe)
            return self.cfg.db_url
        return self.roles.issue(task_id)

    def _gauges(self) -> dict[str, float]:
        restarts = self.forkserver.restarts if self.forkserver is not None else 0
        return {"zygote_restarts": restarts, "running": len(self.running)}

    # --- start-up and shutdown -----------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt task processes a previous supervisor left running; fail the dead ones."""
        rows = await self._db(self.store.tasks_with_status, (TaskStatus.RUNNING,), self.node)
        for row in rows:
            epoch = row.epoch if self.claims is not None else None
            req = TaskLaunch(row.id, self.cfg.task_dir(row.id), self._log_path(row.id))
            try:
                child = await AdoptingLauncher(row.pid, row.pid_create_time).launch(req)
            except LaunchUnavailable as exc:
                # Gone while nobody watched: its own record says how it ended, if it got that far.
                log.info("not re-adopted: %s", exc)
                exit_told, error = own_word(await self._db(self.store.task_outcome, row.id))
                status, message = outcome(None, exit_told, error, lost=True)
                await self.shares.at_end(row.id, epoch, ours=True)  # its files, for other nodes
                await self._finish(row.id, status, message, exit_told, error=error, epoch=epoch)
                continue
            log.info("re-adopted task %s (pid %s)", row.id, row.pid)
            self._announce(Readopted(task_id=row.id, pid=child.pid, node=self.node, at=utcnow()))
            run = self._track(row.id, child, TaskOptions.of(row.options))
            run.plan, run.dirs = self._adopted_plan(row.id)
            run.reported_version, run.epoch = row.state_version, epoch
            self.metrics.started(row.id, child.kind, None)
        if self.roles is not None:
            await self._sweep_roles()
        await self.pump()

    async def _sweep_roles(self) -> None:
        """Drop the database roles a crashed supervisor left: all but live tasks' (any node)."""
        assert self.roles is not None
        ours = set(self.running)  # re-adopted: their processes still use their roles

        def in_use() -> set[str]:
            running = self.store.tasks_with_status((TaskStatus.RUNNING,))
            return ours | {r.id for r in running if r.node != self.node}

        try:
            await self._db(self.roles.sweep, in_use)
        except StoreError as exc:
            log.warning("stale task roles not swept: %s", exc)

    async def shutdown(self, reason: str = "Supervisor shut down") -> None:
        """Stop every task (recording why) so nothing outlives the supervisor."""
        self.closing = True
        async with self._pump_lock:
            pass  # a launch under way finishes (and is tracked) before we list what runs
        runs = list(self.running.values())
        await asyncio.gather(
            *(self.stop_task(r, TaskStatus.CANCELLED, reason, how="ask") for r in runs),
            return_exceptions=True,
        )
        # Queued tasks stay QUEUED: the next supervisor starts them.
        if self.forkserver is not None:
            await self.forkserver.close(self.cfg.stop_ask_timeout, self.cfg.stop_term_timeout)


def _wants_test_hook(options: dict[str, Any]) -> bool:
    synthetic = options.get("synthetic")
    return isinstance(synthetic, dict) and synthetic.get("run_python") is not None
