"""A supervisor among several nodes: its heartbeat, claims, takeovers, fencing, remote cancels.

Only on PostgreSQL (SQLite is one node and keeps its simple path). Every ``interval`` the
node refreshes its row (database time), takes over the tasks of nodes whose heartbeat is
older than ``METASTREAM_NODE_TTL`` (RUNNING ones end FAILED "node X lost" with the exact last
event id, claimed queued ones become claimable), kills its own runs the database no longer
counts as its own (it was declared lost while paused or cut off), acts on cancels asked at
other nodes' gateways, and claims queued work. ``LISTEN`` wakes it at once for a queued task
or a cancel; the interval is the safety net for a missed notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import exc as sa_exc

from core.clock import utcnow
from core.status import TaskStatus
from store import Store
from store.dburl import engine_url
from store.nodes import CANCEL_CHANNEL, QUEUE_CHANNEL, Nodes

if TYPE_CHECKING:
    from runner.supervisor import Supervisor

log = logging.getLogger("metastream.nodes")
MIN_ROUND_GAP = 0.2  # seconds between two rounds, however often NOTIFY wakes us


class NodeLoop:
    """This node's part in the cluster (see the module docstring)."""

    def __init__(
        self,
        sup: Supervisor,
        nodes: Nodes,
        ttl: float,
        on_name_lost: Callable[[], None] | None = None,
    ) -> None:
        self.sup = sup
        self.nodes = nodes
        self.ttl = ttl
        # Another supervisor registered our name (we were judged dead): two supervisors under
        # one name cannot tell their tasks apart, so this one must stop (the caller's stop).
        self._on_name_lost = on_name_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beating: threading.Thread | None = None
        self.interval = max(0.2, min(ttl / 4, 2.0))
        self.boot_id = uuid.uuid4().hex
        self.host = f"{socket.gethostname()}:{_boot_id()}"
        self._wake = asyncio.Event()
        self._stop_beating = threading.Event()

    async def register(self) -> None:
        """Claim our node name (raises store.nodes.NodeTaken while it is live elsewhere)."""
        sup = self.sup
        await asyncio.to_thread(
            self.nodes.register,
            sup.node,
            self.boot_id,
            self.host,
            sup.cfg.max_running,
            sup.cfg.control,
            self.ttl,
        )

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        beating = threading.Thread(target=self._beat_forever, name="node-heartbeat", daemon=True)
        self._beating = beating
        beating.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._listen())
                tg.create_task(self._rounds())
        finally:
            self._stop_beating.set()

    def _name_lost(self) -> None:
        log.error("node %s: another supervisor took this node name; stopping", self.sup.node)
        if self._on_name_lost is not None:
            self._on_name_lost()

    def _beat_forever(self) -> None:
        """The heartbeat on a thread of its own: a busy event loop or a full worker pool
        (a burst of starts) must not make a live node look dead to the others."""
        sup = self.sup
        while not self._stop_beating.wait(self.interval):
            try:
                if not self.nodes.beat(sup.node, self.boot_id, len(sup.running)):
                    if self._loop is not None:
                        self._loop.call_soon_threadsafe(self._name_lost)
                    return
            except (psycopg.Error, sa_exc.SQLAlchemyError, OSError) as exc:
                log.warning("node heartbeat failed: %s", _one_line(exc))

    async def _rounds(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.round()
            except (psycopg.Error, sa_exc.SQLAlchemyError, OSError) as exc:  # the database
                log.warning("node round failed (next in %.1f s): %s", self.interval, _one_line(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            # Any role may NOTIFY any channel (a task's too): however often we are woken, a
            # round costs the database a few queries, so rounds stay MIN_ROUND_GAP apart.
            await asyncio.sleep(max(0.0, began + MIN_ROUND_GAP - loop.time()))

    async def round(self) -> None:
        """One pass: takeovers, fencing, remote cancels, claims (the heartbeat has a thread)."""
        sup = self.sup
        if not await asyncio.to_thread(self.nodes.beat, sup.node, self.boot_id, len(sup.running)):
            self._name_lost()
            return
        lost = await asyncio.to_thread(self.nodes.lost, sup.node, self.ttl)
        orphans = await asyncio.to_thread(self.nodes.orphans, sup.node, self.ttl)
        for name in dict.fromkeys([*lost, *orphans]):
            await self.take_over(name)
        await self.kill_fenced()
        await self.cancels()
        if not sup.closing:
            await sup.pump()

    async def take_over(self, node: str) -> None:
        """End a lost node's RUNNING tasks FAILED and free its queued ones."""
        sup = self.sup
        released = await asyncio.to_thread(self.nodes.release_queued, node)
        if released:
            log.warning("node %s lost: %d queued task(s) claimable again", node, released)
            await asyncio.to_thread(self.nodes.notify, QUEUE_CHANNEL)
        rows = await asyncio.to_thread(sup.store.tasks_with_status, (TaskStatus.RUNNING,), node)
        for row in rows:
            message = f"node {node} lost"
            taken = await asyncio.to_thread(
                self.nodes.take_over, row.id, node, row.epoch, message, utcnow()
            )
            if taken is None:
                continue  # it ended, or another node took it first
            ended = await asyncio.to_thread(sup.store.get_task, row.id)
            if ended is None:
                continue
            await sup.ended_elsewhere(ended)
            log.warning("task %s FAILED: %s (last event %d)", row.id, message, ended.last_event_id)

    async def kill_fenced(self) -> None:
        """Kill our runs that were taken over while we could not beat (paused, cut off)."""
        sup = self.sup
        ours = {
            tid: run.epoch
            for tid, run in sup.running.items()
            if run.stop_reason is None and not run.finished and run.epoch is not None
        }
        for task_id in await asyncio.to_thread(self.nodes.fenced, sup.node, ours):
            run = sup.running.get(task_id)
            if run is not None and run.stop_reason is None:
                log.warning("task %s: its run was taken over by another node; killing it", task_id)
                sup.stop_soon(run, TaskStatus.FAILED, "Fenced: the run was taken over", "kill")

    async def cancels(self) -> None:
        sup = self.sup
        for task_id, reason in (
            await asyncio.to_thread(self.nodes.cancel_requests, sup.node)
        ).items():
            run = sup.running.get(task_id)
            if run is not None and run.stop_reason is None:
                sup.stop_soon(run, TaskStatus.CANCELLED, reason, "ask")

    async def _listen(self) -> None:
        """Wake a round on NOTIFY; reconnect (with the interval's polling meanwhile)."""
        conninfo = (
            engine_url(self.sup.store.url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    async for _note in conn.notifies():
                        self._wake.set()
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (polling meanwhile): %s", _one_line(exc))
                await asyncio.sleep(self.interval)

    async def stopped(self) -> None:
        # A beat still in flight would mark the node "up" again after the clean stop.
        self._stop_beating.set()
        if self._beating is not None:
            await asyncio.to_thread(self._beating.join, 5.0)
        await asyncio.to_thread(self.nodes.stopped, self.sup.node, self.boot_id)


async def wait_ended(store: Store, task_id: str, timeout: float) -> TaskStatus | None:
    """Poll the task's row until it is terminal (a cancel done by another node)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await asyncio.to_thread(store.get_task, task_id)
        if row is None or row.status.terminal or loop.time() >= deadline:
            return row.status if row is not None else None
        await asyncio.sleep(0.1)


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:200]


def _boot_id() -> str:
    """This machine's boot (two supervisors on one host tell each other's pids apart)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:36]
    except OSError:
        return str(os.getpid())
