"""The supervisor: one OS process per task, every lifecycle change persisted and published."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from bus.client import Publisher
from bus.messages import (
    Heartbeat,
    ProcessLifecycle,
    Readopted,
    Spawned,
    State,
    Stopped,
    ZygoteRestarted,
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
from runner.commands import Commands
from runner.forkserver import ForkServer
from runner.metrics import SupervisorMetrics
from runner.outcome import outcome
from runner.policy import Admission, DisconnectPolicy, HeartbeatPolicy, Limits, StopFrom
from runner.spawning import Spawning
from runner.task import spec as task_spec
from runner.workspace_share import WorkspaceShare
from store import Store, StoreError, TaskRow
from store.dburl import is_sqlite
from store.eventlog import EventLogUnreadable
from store.runs import RunRow
from store.taskroles import TaskRoles

log = logging.getLogger("metastream.supervisor")
T = TypeVar("T")

STARTUP_GRACE = 5.0  # to start the interpreter and send a first beat
# A running task's row (progress, message) is written from its states at most this often.
ROW_INTERVAL = 1.0
MAX_VERSION = 2**53  # a task's own word on its state version is clamped below this


class Running:
    """What the supervisor knows of one live task process."""

    def __init__(self, task_id: str, child: process.Child, options: TaskOptions) -> None:
        self.task_id = task_id
        self.child = child
        self.options = options
        self.started = time.monotonic()
        # (final status, message) once we decided to stop it: the outcome, whatever the exit.
        self.stop_reason: tuple[TaskStatus, str] | None = None
        self.stopping: asyncio.Task[str] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.plan = sandbox.Plan(mode="off")
        self.dirs: list[Path] = []
        # Progress the task reported on the bus (authenticated by the proxy), not yet written.
        self.reported_version = 0
        self.pending_row: dict[str, Any] | None = None
        self.row_due = 0.0
        self.row_lock = asyncio.Lock()
        self.finished = False
        self.epoch: int | None = None  # the run epoch its writes are fenced with


class Supervisor(Commands, Spawning):
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

    async def stop_task(self, run: Running, status: TaskStatus, message: str, how: StopFrom) -> str:
        """Stop a running task (once, however many ask) and wait until it is down.

        ``how`` is where the stop sequence starts: "ask" (a cancel: let the task flush and
        exit), "term" (a limit: SIGTERM the group), or "kill" (hung or out of memory).
        """
        if run.stop_reason is None:
            run.stop_reason = (status, message)
        if run.stopping is None:
            self.metrics.killed(_kill_reason(status, message))
            ask_timeout = self.cfg.stop_ask_timeout if how == "ask" else 0.0
            term_timeout = self.cfg.stop_term_timeout if how in ("ask", "term") else 0.0
            run.stopping = asyncio.create_task(self._stop_sequence(run, ask_timeout, term_timeout))
        ended = await run.stopping  # asked / terminated / killed / exited
        if run.watcher is not None:
            await run.watcher
        return ended

    async def _stop_sequence(self, run: Running, ask_timeout: float, term_timeout: float) -> str:
        how = await process.stop(run.child, ask_timeout, term_timeout)
        status, reason = run.stop_reason or (TaskStatus.CANCELLED, "")
        self._announce(
            Stopped(
                task_id=run.task_id,
                pid=run.child.pid,
                node=self.node,
                at=utcnow(),
                how=how,
                status=status,
                reason=reason,
            )
        )
        return how

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
        # A child without a Popen was forked by the zygote (runner.forkserver).
        warm = child.popen is None
        self._announce(
            Spawned(task_id=task_id, pid=child.pid, node=self.node, at=utcnow(), warm=warm)
        )
        run = self._track(task_id, child, TaskOptions.of(row.options))
        run.plan, run.dirs, run.reported_version = plan, dirs, started.state_version
        run.epoch = epoch
        self.metrics.started(
            task_id, "warm" if warm else "cold", row.queued_at, row.last_event_id + 1
        )
        self._publish(started)

    def _track(self, task_id: str, child: process.Child, options: TaskOptions) -> Running:
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

    async def _revoke_role(self, task_id: str) -> None:
        """Drop the ended task's database role (a failure is left to the next start's sweep)."""
        if self.roles is None:
            return
        try:
            await self._db(self.roles.revoke, task_id)
        except StoreError as exc:
            log.warning("task %s: its database role stays until the next start: %s", task_id, exc)

    async def _watch(self, run: Running) -> None:
        await run.child.wait()
        task_id = run.task_id
        if run.stopping is None:
            # Children it left behind die with it.
            await asyncio.to_thread(process.reap_group, run.child)
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
        error = told.get("error")
        error = error[:2000] if isinstance(error, str) and error else None
        exit_told = told.get("exit_code")
        exit_told = exit_told if isinstance(exit_told, int) else None
        if run.stop_reason is not None:
            status, message = run.stop_reason
        else:
            status, message = outcome(
                run.child.returncode, exit_told, error, adopted=run.child.adopted, lost=False
            )
        # An adopted child's status is not ours to read: the code the task recorded stands in.
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

    def reported(self, msg: State) -> None:
        """A running task's own progress state (the proxy checked who sent it)."""
        run = self.running.get(msg.task_id)
        if run is None or run.finished or msg.status != TaskStatus.RUNNING:
            return  # the outcome is ours to write, never the task's
        if msg.version <= run.reported_version:
            return
        run.reported_version = msg.version
        run.pending_row = dict(
            progress=msg.progress,
            current_agent=msg.current_agent,
            last_message=msg.last_message,
            last_event_id=msg.last_event_id,
            state_version=msg.version,
        )

    async def write_progress(self) -> None:
        """Write the running tasks' reported progress rows (each at most every ROW_INTERVAL)."""
        now = self._clock()
        for run in list(self.running.values()):
            if run.pending_row is None or now < run.row_due:
                continue
            async with run.row_lock:
                row, run.pending_row = run.pending_row, None
                if run.finished or row is None:
                    continue
                run.row_due = now + ROW_INTERVAL
                await self._db(self.store.save_state, run.task_id, row, run.epoch)

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

    def _gauges(self) -> dict[str, float]:
        restarts = self.forkserver.restarts if self.forkserver is not None else 0
        return {"zygote_restarts": restarts, "running": len(self.running)}

    # --- heartbeats ----------------------------------------------------------------------

    def heard(self, msg: Heartbeat) -> None:
        self.heartbeats.beat(msg.task_id)
        self.metrics.heard(msg)

    def bus_beacon(self) -> None:
        if self.heartbeats.beacon():
            self.disconnects.pause()  # no lease could arrive while the bus was down

    async def check(self) -> None:
        """Apply the heartbeat, disconnect and limit policies to every running task."""
        self._watch_zygote()
        self.shares.poll(self.running.values())  # checkpoints to the store (several nodes)
        for task_id, silent in self.heartbeats.overdue():
            run = self.running.get(task_id)
            if run is None or run.stop_reason is not None:
                self.heartbeats.forget(task_id)
                continue
            msg = f"Task process unresponsive: no heartbeat for {silent:.1f} s; killed"
            self.metrics.heartbeat_misses.inc()
            self.stop_soon(run, TaskStatus.FAILED, msg, how="kill")
        if not self.heartbeats.bus_ok():
            return  # leases can't arrive either: judge nobody's absence
        for run in list(self.running.values()):
            if run.stop_reason is not None:
                continue
            opts = run.options
            mode = opts.disconnect_policy or self.cfg.disconnect_policy
            grace = opts.grace_seconds if opts.grace_seconds else self.cfg.disconnect_grace
            if self.disconnects.should_stop(run.task_id, mode, grace):
                why = "last client left" if mode == "kill" else f"no client for {grace:g} s"
                message = f"Cancelled: {why} (policy {mode})"
                self.stop_soon(run, TaskStatus.CANCELLED, message, how="ask")
                continue
            limits = Limits(
                opts.timeout_seconds or self.cfg.task_timeout,
                opts.memory_limit_mb or self.cfg.task_memory_mb,
            )
            rss = process.tree_rss_mb(run.child, limits.memory_mb) if limits.memory_mb else 0.0
            breach = limits.breach(self._clock() - run.started, rss)
            if breach is not None:
                self.stop_soon(run, TaskStatus.FAILED, breach.message, how=breach.stop_from)

    def _watch_zygote(self) -> None:
        # The fork server counts its restarts; each new one is announced once (polled on the
        # supervisor's tick, so the fork server needs no callback into the supervisor).
        fs = self.forkserver
        if fs is not None and fs.restarts > self._zygote_restarts:
            self._zygote_restarts = fs.restarts
            self._announce(ZygoteRestarted(node=self.node, at=utcnow(), restarts=fs.restarts))

    def stop_soon(self, run: Running, status: TaskStatus, message: str, how: StopFrom) -> None:
        log.warning("task %s: %s", run.task_id, message)
        task = asyncio.create_task(self.stop_task(run, status, message, how=how))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- start-up and shutdown -----------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt task processes a previous supervisor left running; fail the dead ones."""
        rows = await self._db(self.store.tasks_with_status, (TaskStatus.RUNNING,), self.node)
        for row in rows:
            child = None
            if row.pid is not None and row.pid_create_time is not None:
                child = process.adopt(row.pid, row.pid_create_time)
            if child is not None:
                log.info("re-adopted task %s (pid %s)", row.id, row.pid)
                self._announce(
                    Readopted(task_id=row.id, pid=child.pid, node=self.node, at=utcnow())
                )
                run = self._track(row.id, child, TaskOptions.of(row.options))
                run.plan, run.dirs = self._adopted_plan(row.id)
                run.reported_version = row.state_version
                run.epoch = row.epoch if self.claims is not None else None
                self.metrics.started(row.id, "adopted", None)
                continue
            # Gone while nobody watched: its own record says how it ended, if it got that far.
            told = await self._db(self.store.task_outcome, row.id)
            exit_told, error = told.get("exit_code"), told.get("error")
            exit_told = exit_told if isinstance(exit_told, int) else None
            error = error[:2000] if isinstance(error, str) and error else None
            status, message = outcome(None, exit_told, error, adopted=False, lost=True)
            epoch = row.epoch if self.claims is not None else None
            await self.shares.at_end(row.id, epoch, ours=True)  # its files, for other nodes
            await self._finish(row.id, status, message, exit_told, error=error, epoch=epoch)
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


def _kill_reason(status: TaskStatus, message: str) -> str:
    """A bounded label for why the supervisor stopped a task (see runner.metrics)."""
    if status == TaskStatus.CANCELLED:
        if message.startswith("Supervisor shut down"):
            return "shutdown"
        return "disconnect" if "(policy " in message else "cancel"
    if "unresponsive" in message:
        return "unresponsive"
    return "memory" if "memory" in message else "timeout"
