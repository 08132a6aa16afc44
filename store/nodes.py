"""Several nodes on one PostgreSQL database: node rows, claiming queued tasks, takeovers.

PostgreSQL is the coordination engine (issue 15): a queued task has no node until a
supervisor claims it with ``SELECT ... FOR UPDATE SKIP LOCKED``, each claim bumps the task's
run epoch, and a takeover of a lost node's task bumps it again so that the old run's writes
are refused (the fencing triggers of migration 0003). Heartbeats use the database's clock.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, text, update
from sqlalchemy.engine import Engine

from core.status import TaskStatus
from store.schema import events, nodes, tasks

log = logging.getLogger("metastream.store")

QUEUE_CHANNEL = "metastream_queue"  # NOTIFY: a task was queued (or released)
CANCEL_CHANNEL = "metastream_cancel"  # NOTIFY: a cancel was asked (payload: task id)


class NodeTaken(Exception):
    """Another live supervisor already runs under this node name."""


@dataclass(frozen=True)
class NodeRow:
    name: str
    boot_id: str
    host: str
    pid: int
    heartbeat: datetime
    started_at: datetime
    capacity: int
    running: int
    control: str
    state: str
    age: float  # seconds since its heartbeat, by the database's clock


@dataclass(frozen=True)
class TakenOver:
    """A lost node's RUNNING task, ended here."""

    task_id: str
    last_event_id: int
    run_count: int


class Nodes:
    """The nodes table and the claims on the tasks table (PostgreSQL only)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def register(
        self, name: str, boot_id: str, host: str, capacity: int, control: str, ttl: float
    ) -> None:
        """Claim the node name; :class:`NodeTaken` while another live supervisor holds it.

        A row whose heartbeat is within ``ttl`` is live, unless it is this host's and its
        process is gone (a supervisor restarted within the TTL re-adopts its tasks).
        """
        with self._engine.begin() as c:
            c.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": "node:" + name})
            old = self._get(c, name)
            if (
                old is not None
                and old.state == "up"
                and old.age < ttl
                and not (old.host == host and not _alive(old.pid))
            ):
                raise NodeTaken(
                    f"node name {name!r} is in use by a live supervisor (pid {old.pid} on "
                    f"{old.host}, heartbeat {old.age:.1f} s ago); give this one another "
                    "METASTREAM_NODE, or stop that one first"
                )
            values = dict(
                boot_id=boot_id,
                host=host,
                pid=os.getpid(),
                heartbeat=func.now(),
                started_at=func.now(),
                capacity=capacity,
                running=0,
                control=control,
                state="up",
            )
            if old is None:
                c.execute(nodes.insert().values(name=name, **values))
            else:
                c.execute(update(nodes).where(nodes.c.name == name).values(**values))

    def beat(self, name: str, boot_id: str, running: int) -> bool:
        """Refresh our heartbeat; False if another supervisor took the name meanwhile."""
        with self._engine.begin() as c:
            res = c.execute(
                update(nodes)
                .where(nodes.c.name == name, nodes.c.boot_id == boot_id)
                .values(heartbeat=func.now(), running=running, state="up")
            )
            return bool(res.rowcount)

    def stopped(self, name: str, boot_id: str) -> None:
        """A clean shutdown: the name is free at once."""
        with self._engine.begin() as c:
            c.execute(
                update(nodes)
                .where(nodes.c.name == name, nodes.c.boot_id == boot_id)
                .values(state="stopped", running=0)
            )

    def all(self) -> list[NodeRow]:
        with self._engine.connect() as c:
            rows = c.execute(self._select().order_by(nodes.c.name)).mappings()
            return [NodeRow(**r) for r in rows]

    def _get(self, c: Connection, name: str) -> NodeRow | None:
        r = c.execute(self._select().where(nodes.c.name == name)).mappings().first()
        return NodeRow(**r) if r else None

    @staticmethod
    def _select() -> Any:
        age = func.extract("epoch", func.now() - nodes.c.heartbeat).label("age")
        return select(*nodes.c, age)

    # --- claiming ------------------------------------------------------------------------

    def notify(self, channel: str, payload: str = "") -> None:
        with self._engine.begin() as c:
            c.execute(select(func.pg_notify(channel, payload)))

    def claim(self, name: str, slots: int) -> list[str]:
        """Take up to ``slots`` unclaimed queued tasks, oldest first; their ids."""
        if slots <= 0:
            return []
        with self._engine.begin() as c:
            ids = list(
                c.execute(
                    select(tasks.c.id)
                    .where(tasks.c.status == TaskStatus.QUEUED.value, tasks.c.node.is_(None))
                    .order_by(tasks.c.queued_at, tasks.c.created_ns)
                    .limit(slots)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if ids:
                c.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(ids))
                    .values(node=name, epoch=tasks.c.epoch + 1)
                )
        return ids

    def lost(self, me: str, ttl: float) -> list[str]:
        """Other nodes whose heartbeat is older than ``ttl``, marked lost by us."""
        with self._engine.begin() as c:
            stale = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, ttl)
            names = list(
                c.execute(
                    select(nodes.c.name)
                    .where(nodes.c.name != me, nodes.c.heartbeat < stale, nodes.c.state == "up")
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if names:
                c.execute(update(nodes).where(nodes.c.name.in_(names)).values(state="lost"))
        return names

    def orphans(self, me: str, ttl: float) -> list[str]:
        """Nodes that hold RUNNING or claimed tasks but are no live node (lost, stopped...)."""
        live = select(nodes.c.name).where(
            nodes.c.state == "up",
            nodes.c.heartbeat >= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, ttl),
        )
        q = (
            select(tasks.c.node)
            .where(
                tasks.c.status.in_([TaskStatus.RUNNING.value, TaskStatus.QUEUED.value]),
                tasks.c.node.is_not(None),
                tasks.c.node != me,
                tasks.c.node.not_in(live),
            )
            .distinct()
        )
        with self._engine.connect() as c:
            return [str(n) for n in c.execute(q).scalars()]

    def release_queued(self, node: str) -> int:
        """A lost node's claimed, not yet started tasks become claimable again."""
        with self._engine.begin() as c:
            res = c.execute(
                update(tasks)
                .where(tasks.c.node == node, tasks.c.status == TaskStatus.QUEUED.value)
                .values(node=None, epoch=tasks.c.epoch + 1)
            )
            return int(res.rowcount)

    def take_over(self, task_id: str, node: str, epoch: int, message: str, now: str) -> Any:
        """End a lost node's RUNNING task FAILED, fencing its run; the new row, or None.

        One transaction: the epoch moves first (the row lock makes a write of the old run
        that is under way wait, then fail), so the last event id read after it is exact.
        """
        with self._engine.begin() as c:
            res = c.execute(
                update(tasks)
                .where(
                    tasks.c.id == task_id,
                    tasks.c.node == node,
                    tasks.c.epoch == epoch,
                    tasks.c.status == TaskStatus.RUNNING.value,
                )
                .values(epoch=tasks.c.epoch + 1)
            )
            if not res.rowcount:
                return None
            last = c.execute(
                select(func.max(events.c.event_id)).where(events.c.task_id == task_id)
            ).scalar_one_or_none()
            last_id = int(last or 0)
            c.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(
                    status=TaskStatus.FAILED.value,
                    state_version=tasks.c.state_version + 1,
                    last_event_id=last_id,
                    completed_at=now,
                    last_message=message,
                    pid=None,
                )
            )
            return c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()

    # --- cancel across nodes -------------------------------------------------------------

    def request_cancel(self, task_id: str, reason: str) -> bool:
        """Record a cancel for the node that runs the task, and wake it."""
        with self._engine.begin() as c:
            res = c.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status == TaskStatus.RUNNING.value)
                .values(cancel_request=reason or "Cancelled")
            )
            if res.rowcount:
                # No payload: any role may LISTEN, and task ids are not for tasks to learn.
                c.execute(select(func.pg_notify(CANCEL_CHANNEL, "")))
            return bool(res.rowcount)

    def cancel_requests(self, node: str) -> dict[str, str]:
        """This node's running tasks with a cancel asked elsewhere: id -> reason."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(tasks.c.id, tasks.c.cancel_request).where(
                    tasks.c.node == node,
                    tasks.c.status == TaskStatus.RUNNING.value,
                    tasks.c.cancel_request.is_not(None),
                )
            )
            return {str(i): str(r) for i, r in rows}

    def fenced(self, node: str, runs: dict[str, int]) -> list[str]:
        """Of our runs (task id -> epoch), those the database no longer counts as ours."""
        if not runs:
            return []
        with self._engine.connect() as c:
            rows = c.execute(
                select(tasks.c.id, tasks.c.node, tasks.c.epoch, tasks.c.status).where(
                    tasks.c.id.in_(list(runs))
                )
            ).all()
        current = {str(i): (n, e, s) for i, n, e, s in rows}
        out = []
        for task_id, epoch in runs.items():
            n, e, s = current.get(task_id, (None, None, None))
            if n != node or e != epoch or s != TaskStatus.RUNNING.value:
                out.append(task_id)
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
