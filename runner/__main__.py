"""``python -m runner``: the supervisor process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import zmq.asyncio

from bus.auth import load_master, trusted_keys
from bus.client import AsyncSubscriber, DecodeFailure, Publisher, decode_frames
from bus.curve import check_endpoints
from bus.messages import LEASE_TOPIC, Heartbeat, Lease, State, topic
from bus.ratelog import RateLimitedLog
from core import logs, settings
from core.harden import harden_trusted
from core.metrics import Registry, Server
from runner.control import ControlServer
from runner.nodes import NodeLoop
from runner.supervisor import Supervisor
from store import Store, StoreError, migrate
from store.nodes import NodeTaken

log = logging.getLogger("metastream.supervisor")


async def main() -> None:
    harden_trusted()  # before reading anything secret
    cfg = settings.load()
    # The control channel's keys derive from this machine's master: it stays on this machine.
    check_endpoints({"METASTREAM_CONTROL": cfg.control}, None, curve_capable=False)
    from runner.sandbox import mode_problem

    problem = mode_problem(cfg.sandbox_mode)
    if problem:
        raise SystemExit(f"supervisor: {problem}")
    log.info("task sandbox: %s", cfg.sandbox_mode)
    cfg.ensure_dirs()
    from runner.process import become_subreaper

    if not become_subreaper():
        log.warning("could not become a child subreaper: orphans of tasks are reaped by init")
    try:
        store = Store(cfg.db_url, cfg.events_dir, migrate=cfg.db_migrate)
        migrated = store.create_schema()
        # PostgreSQL: each task gets a role of its own (store.taskroles); checked here, so a
        # stack whose role may not create roles says so at once instead of at each task.
        roles = store.task_roles() if cfg.db_task_roles else None
        if roles is not None:
            roles.prepare()
        elif not cfg.db_url.startswith("sqlite"):
            log.warning("METASTREAM_DB_TASK_ROLES=0: task processes hold the stack's database role")
    except StoreError as exc:
        print(f"supervisor: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if migrated:
        logs.announce(
            f"supervisor: migrated the database schema from {migrated} to {migrate.head()}"
        )
    ctx = zmq.asyncio.Context()
    master = load_master(cfg.home)
    publisher = Publisher(cfg.bus_pub, ctx=zmq.Context.instance(), keys=trusted_keys(master))
    registry = Registry(cfg.metrics)
    sup = Supervisor(cfg, store, publisher, metrics=registry, bus_master=master, roles=roles)
    sup.metrics.bus_up.set_function(lambda: float(sup.heartbeats.bus_ok()))
    metrics_server = Server(registry, cfg.metrics_host, cfg.supervisor_metrics_port, "supervisor")
    sub = AsyncSubscriber(cfg.bus_sub, ctx=ctx)
    sub.subscribe([sup.beacon_topic, LEASE_TOPIC])
    # Heartbeats and the task's own progress states: the proxy forwards only those the task
    # itself sent (bus/proxy.py), and we write its row from them.
    sup.on_started = lambda tid: sub.subscribe([topic(tid, "heartbeat"), topic(tid, "state")])

    def ended(tid: str) -> None:
        sub.unsubscribe(topic(tid, "heartbeat"))
        sub.unsubscribe(topic(tid, "state"))

    sup.on_ended = ended
    control = ControlServer(cfg.control, sup, ctx, master)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # record and wake; the loop does the rest

    node_loop = None
    if sup.claims is not None:  # PostgreSQL: one node of possibly several (runner/nodes.py)
        node_loop = NodeLoop(sup, sup.claims, cfg.node_ttl, on_name_lost=stop.set)
        try:
            await node_loop.register()
        except NodeTaken as exc:
            print(f"supervisor: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    if cfg.warm:
        sup.start_forkserver()  # imports for seconds in the background: readiness does not wait
    await sup.recover()
    logs.announce(f"supervisor: node {sup.node}, control at {cfg.control}")
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(control.serve()),
            tg.create_task(_listen(sub, sup)),
            tg.create_task(_tick(sup, publisher, cfg.heartbeat_interval)),
        ]
        if node_loop is not None:
            tasks.append(tg.create_task(node_loop.run()))
        await stop.wait()
        log.info("supervisor stopping: stopping %d running task(s)", len(sup.running))
        await sup.shutdown()
        for t in tasks:
            t.cancel()
    if node_loop is not None:
        await node_loop.stopped()
    control.close()
    metrics_server.close()
    sub.close()
    publisher.close(linger_ms=500)
    store.close()
    ctx.term()


async def _listen(sub: AsyncSubscriber, sup: Supervisor) -> None:
    bad_frames = RateLimitedLog(log)
    while True:
        frames = await sub.recv_frames()
        if frames[0] == sup.beacon_topic:
            sup.bus_beacon()
            continue
        _tid, msg = decode_frames(frames)
        match msg:
            case Heartbeat():
                sup.heard(msg)
            case State():
                sup.reported(msg)
            case Lease(task_id=task_id, gateway_id=gw, watchers=n, ttl=ttl):
                sup.disconnects.lease(task_id, gw, n, ttl)
            case DecodeFailure(error=error):
                sup.metrics.bad_frames.inc()
                bad_frames.warning("dropped a bad bus frame: %s", error)


async def _tick(sup: Supervisor, pub: Publisher, interval: float) -> None:
    while True:
        # Our beacon travels through the proxy and back: hearing it proves the bus is up.
        pub.send(sup.beacon_topic, str(time.time()).encode())
        await sup.check()
        await sup.write_progress()
        await asyncio.sleep(interval / 2)


if __name__ == "__main__":
    logs.setup("supervisor")
    asyncio.run(main())
