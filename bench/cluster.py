"""Several nodes (issue 15): two supervisors and two gateways against one of each, same run.

Both setups are :class:`metastream.cluster.Cluster` on one PostgreSQL server (a database each)
with the bus on ``tcp://127.0.0.1`` with CURVE, so only the number of nodes differs. 20 tasks,
5 clients each, the clients of a task spread over the gateways. On one machine two nodes
share its cores: the ratio shows what coordination costs, not what a second host would add.
Then the time from a node's death (SIGKILL of its supervisor and tasks) to its tasks' final
state, which is bounded by ``METASTREAM_NODE_TTL`` plus one round of the survivor.
"""

from __future__ import annotations

import contextlib
import signal
import time

import httpx
import psutil

from bench.clients import percentile, throughput
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, row, task, wait_for
from bench.postgres import _server
from bench.scenarios import _steady
from bench.table import Row
from metastream.cluster import Cluster

TASKS, CLIENTS = 20, 5
RATE = 100  # events/s per task for the latency runs
TTL = 5.0


def _urls(cluster: Cluster, ids: list[str]) -> list[str]:
    gateways = [s.ws_url for s in cluster.nodes.values()]
    return [
        f"{gateways[(i * CLIENTS + j) % len(gateways)]}/ws/tasks/{tid}"
        for i, tid in enumerate(ids)
        for j in range(CLIENTS)
    ]


def s_cluster(cx: Ctx, rows: list[Row]) -> None:
    """Aggregate deliveries/s and p99 on two nodes vs one; node death to final state."""
    label = f"{TASKS} tasks x {CLIENTS} clients"
    tput = row(
        rows, "cl", f"deliveries/s, {label}, 2 nodes + 2 gateways", "msgs/s",
        baseline_name="1 node + 1 gateway",
    )  # fmt: skip
    p99 = row(
        rows, "cl", f"latency p99 @{RATE}/s per task, {label}, 2 nodes", "ms",
        baseline_name="1 node + 1 gateway",
    )  # fmt: skip
    death = row(rows, "cl", f"node death -> its tasks FAILED (TTL {TTL:g} s)", "s")
    n = cx.size(2_000, 100)
    k = int(RATE * cx.size(5.0, 1.0))
    env = {
        "METASTREAM_MAX_RUNNING": str(TASKS),
        "METASTREAM_NODE_TTL": str(TTL),
        "METASTREAM_WARM_METAGPT": "0",
    }
    with _server() as server:
        two = Cluster(cx.home("cl2"), server.create_database(), ("a", "b"), env)
        one = Cluster(cx.home("cl1"), server.create_database(), ("solo",), env)
        with two, one:
            apis = {
                "two": httpx.Client(base_url=two.nodes["a"].url, timeout=30),
                "one": httpx.Client(base_url=one.nodes["solo"].url, timeout=30),
            }
            setups = {"two": two, "one": one}

            def rate(name: str) -> float:
                body = {"events": n, "rate": 0, "payload_bytes": B}
                ids = [create(apis[name], synthetic=body) for _ in range(TASKS)]
                urls = _urls(setups[name], ids)
                return throughput(cx.clients(urls, n, procs=4, timeout=120))

            def late(name: str) -> float:
                body = {"events": k, "rate": RATE, "payload_bytes": B}
                ids = [create(apis[name], synthetic=body) for _ in range(TASKS)]
                res = cx.clients(_urls(setups[name], ids), k, procs=4, latency=True, timeout=120)
                return percentile(_steady(res)[0], 99)

            try:
                for name in setups:
                    rate(name)  # warm-up
                for rep in range(cx.reps):
                    v2, l2 = rate("two"), late("two")
                    v1, l1 = rate("one"), late("one")
                    assert tput.baseline is not None and p99.baseline is not None
                    tput.value.samples.append(v2)
                    tput.baseline.samples.append(v1)
                    p99.value.samples.append(l2)
                    p99.baseline.samples.append(l1)
                    cx.log(
                        f"  [cluster] rep {rep + 1}: {v2:,.0f} vs {v1:,.0f} msgs/s; "
                        f"p99 {l2:.1f} vs {l1:.1f} ms"
                    )
                death.value.samples.append(_node_death(two, apis["two"]))
                cx.log(f"  [cluster] node death -> final state {death.value.samples[-1]:.2f} s")
            finally:
                for api in apis.values():
                    api.close()


def _node_death(c: Cluster, api: httpx.Client) -> float:
    """Kill node b (supervisor and tasks); seconds until its tasks are FAILED (asked at a)."""
    with httpx.Client(base_url=c.nodes["b"].url, timeout=30) as api_b:  # b's own starts
        ids = [create(api_b, synthetic={"events": 1_000_000, "rate": 20}) for _ in range(4)]
        for tid in ids:
            api_b.post(f"/api/tasks/{tid}/run").raise_for_status()
    wait_for(lambda: all(task(api, t)["status"] == "RUNNING" for t in ids), 60, "running")
    on_b = [t for t in ids if task(api, t)["node"] == "b"]
    if not on_b:
        raise RuntimeError("no task landed on node b")
    sup = psutil.Process(c.nodes["b"].procs["supervisor"].pid)
    tree = [sup, *sup.children(recursive=True)]
    killed = time.monotonic()
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    wait_for(lambda: all(task(api, t)["status"] == "FAILED" for t in on_b), TTL + 30, "failed")
    took = time.monotonic() - killed
    for t in ids:
        api.post(f"/api/tasks/{t}/cancel")
    return took
