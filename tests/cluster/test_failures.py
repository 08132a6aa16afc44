"""Nodes that die, pause or are asked from elsewhere: takeover, fencing, cross-node cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from metastream.cluster import Cluster
from metastream.stack import Stack
from store import Store
from tests.helpers import Received, collect, create_task, log_events, poll_for, wait_status

pytestmark = pytest.mark.cluster
TTL = 4.0  # tests/cluster/conftest.py FAST
MARGIN = 15.0  # a loaded 2-core CI


def _tree(stack: Stack) -> list[psutil.Process]:
    """The node's supervisor and every process under it (its tasks, the zygote)."""
    sup = psutil.Process(stack.procs["supervisor"].pid)
    return [sup, *sup.children(recursive=True)]


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def _owner(api: httpx.Client, task_id: str) -> str:
    def running_node() -> str | None:
        t = api.get(f"/api/tasks/{task_id}").json()
        return t["node"] if t["status"] == "RUNNING" else None

    return poll_for(running_node, 30, what=f"task {task_id} running on a node")


def test_cancel_at_one_gateway_stops_the_task_on_the_other_node(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    with httpx.Client(base_url=a.url, timeout=30) as api:
        t = create_task(api, synthetic={"events": 100_000, "rate": 20, "spawn_children": 2})
        api.post(f"/api/tasks/{t['id']}/run")
        owner = _owner(api, t["id"])
        other = cluster.nodes["b" if owner == "a" else "a"]
        store = Store(cluster.common["METASTREAM_DB_URL"])
        try:
            pid = poll_for(lambda: store.get_task(t["id"]).pid, 30)  # type: ignore[union-attr]
        finally:
            store.close()
        tree = [psutil.Process(pid)]
        poll_for(lambda: len(tree[0].children(recursive=True)) >= 2, 30, what="children")
        tree += tree[0].children(recursive=True)
        with httpx.Client(base_url=other.url, timeout=30) as api_other:
            r = api_other.post(f"/api/tasks/{t['id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "CANCELLED", r.json()
        assert not [p.pid for p in tree if p.is_running() and p.status() != "zombie"]


def test_a_lost_node_s_tasks_fail_with_the_exact_last_event_and_its_queue_runs_elsewhere(
    cluster: Cluster,
) -> None:
    a = cluster.nodes["a"]
    with httpx.Client(base_url=a.url, timeout=30) as api:
        ids = []
        for _ in range(5):  # 2 on each node, the fifth waits for a free slot
            t = create_task(api, synthetic={"events": 300, "rate": 30})
            api.post(f"/api/tasks/{t['id']}/run")
            ids.append(t["id"])
        owners = {tid: _owner(api, tid) for tid in ids[:4]}
        victim_name = "b"
        victims = [tid for tid, n in owners.items() if n == victim_name]
        assert len(victims) == 2, owners
        results: list[Received] = []

        async def watch_all() -> None:
            results.extend(
                await asyncio.gather(*(collect(a.ws_url, t, timeout=90) for t in victims))
            )

        watcher = threading.Thread(target=asyncio.run, args=(watch_all(),))
        watcher.start()
        poll_for(lambda: api.get(f"/api/tasks/{victims[0]}").json()["last_event_id"] > 10, 30)
        killed_at = time.monotonic()
        _signal(_tree(cluster.nodes[victim_name]), signal.SIGKILL)
        ends = {}
        for tid in victims:
            end = ends[tid] = wait_status(
                api, tid, {"FAILED", "COMPLETED", "CANCELLED"}, TTL + MARGIN
            )
            assert end["status"] == "FAILED" and end["last_message"] == "node b lost", end
            logged = [e["event_id"] for e in log_events(api, tid)]
            assert end["last_event_id"] == len(logged) and logged == list(range(1, len(logged) + 1))
        took = time.monotonic() - killed_at
        watcher.join(90)
        for tid, got in zip(victims, results, strict=True):
            assert got.event_ids == list(range(1, len(got.event_ids) + 1))
            final = got.of("state")[-1]
            assert final["status"] == "FAILED" and got.close_code == 1000, final
            assert got.event_ids[-1] == ends[tid]["last_event_id"]  # every event, then the end
        # The fifth runs on a, the only live node.
        fifth = wait_status(api, ids[4], {"COMPLETED", "FAILED"}, 90)
        assert fifth["status"] == "COMPLETED" and fifth["node"] == "a", fifth
        nodes = {n["name"]: n["state"] for n in api.get("/api/nodes").json()["nodes"]}
        assert nodes == {"a": "up", "b": "lost"}
    print(f"node death to final state: {took:.2f} s (TTL {TTL:g} s)")


def test_a_paused_node_is_fenced_when_it_comes_back(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    with httpx.Client(base_url=a.url, timeout=30) as api:
        t = create_task(api, synthetic={"events": 200, "rate": 20})
        api.post(f"/api/tasks/{t['id']}/run")
        victim = _owner(api, t["id"])
        survivor = cluster.nodes["b" if victim == "a" else "a"]
        poll_for(lambda: api.get(f"/api/tasks/{t['id']}").json()["last_event_id"] > 10, 30)
        store = Store(cluster.common["METASTREAM_DB_URL"])
        try:
            pid = store.get_task(t["id"]).pid  # type: ignore[union-attr]
        finally:
            store.close()
        assert pid is not None
        paused = _tree(cluster.nodes[victim])
        assert pid in [p.pid for p in paused]
        _signal(paused, signal.SIGSTOP)
        try:
            end = wait_status(api, t["id"], {"FAILED"}, TTL + MARGIN)
            assert end["last_message"] == f"node {victim} lost", end
            lost_at = end["last_event_id"]
            with httpx.Client(base_url=survivor.url, timeout=30) as api_s:
                assert api_s.post(f"/api/tasks/{t['id']}/run").status_code == 200
            rerun = poll_for(
                lambda: (r := api.get(f"/api/tasks/{t['id']}").json())["status"] == "RUNNING" and r,
                30,
            )
            assert rerun["node"] != victim and rerun["run_count"] == 2, rerun
        finally:
            _signal(paused, signal.SIGCONT)
        # The zombie is killed by its own node, which finds its run taken over.
        poll_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30)
        end = wait_status(api, t["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert end["status"] == "COMPLETED" and end["run_count"] == 2, end
        events = log_events(api, t["id"])
        assert [e["event_id"] for e in events] == list(range(1, len(events) + 1))
        # After the takeover point only the second run wrote: its own seq from 1.
        second = [e["payload"]["seq"] for e in events if e["event_id"] > lost_at]
        assert second == list(range(1, 201)), second[:20]
    assert os.path.exists(cluster.root)
