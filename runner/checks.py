"""Running tasks under the policies: heartbeats, disconnects, limits, and stopping a task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bus.messages import Heartbeat, ProcessLifecycle, Stopped, ZygoteRestarted
from core.clock import utcnow
from core.settings import Settings
from core.status import TaskStatus
from runner import stopping
from runner.forkserver import ForkServer
from runner.metrics import SupervisorMetrics
from runner.policy import DisconnectPolicy, HeartbeatPolicy, Limits, StopFrom
from runner.running import Running
from runner.workspace_share import WorkspaceShare

log = logging.getLogger("metastream.supervisor")


class Checks:
    """Mixin of :class:`runner.supervisor.Supervisor`: when a running task must stop, and how."""

    cfg: Settings
    node: str
    running: dict[str, Running]
    heartbeats: HeartbeatPolicy
    disconnects: DisconnectPolicy
    metrics: SupervisorMetrics
    forkserver: ForkServer | None
    shares: WorkspaceShare
    _zygote_restarts: int
    _background: set[asyncio.Task[Any]]
    _clock: Callable[[], float]
    _announce: Callable[[ProcessLifecycle], None]

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
        how = await stopping.stop(run.child, ask_timeout, term_timeout)
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
            rss = run.child.rss_mb(limits.memory_mb) if limits.memory_mb else 0.0
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


def _kill_reason(status: TaskStatus, message: str) -> str:
    """A bounded label for why the supervisor stopped a task (see runner.metrics)."""
    if status == TaskStatus.CANCELLED:
        if message.startswith("Supervisor shut down"):
            return "shutdown"
        return "disconnect" if "(policy " in message else "cancel"
    if "unresponsive" in message:
        return "unresponsive"
    return "memory" if "memory" in message else "timeout"
