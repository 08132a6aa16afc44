"""The live path across nodes: start races, leases over the bus, the bus proxy restarted."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets
import zmq

from metastream.cluster import Cluster
from store import Store
from tests.e2e.test_durability import until
from tests.helpers import collect, create_task, follow, log_events, wait_status

pytestmark = pytest.mark.cluster


def test_fifty_concurrent_starts_over_both_gateways_start_one_process(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    with httpx.Client(base_url=a.url, timeout=30) as api:
        t = create_task(api, synthetic={"events": 50, "rate": 25})

    async def race() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            posts = [
                client.post(f"{(a if i % 2 else b).url}/api/tasks/{t['id']}/run") for i in range(40)
            ]
            # WebSocket auto-starts (a PENDING task is started by the connection).
            socks = [
                collect((a if i % 2 else b).ws_url, t["id"], stop_after_events=1, timeout=30)
                for i in range(10)
            ]
            done = await asyncio.gather(*posts, *socks)
            return [r.status_code for r in done[:40]]  # type: ignore[union-attr]

    codes = asyncio.run(race())
    assert set(codes) <= {200, 409}, codes
    with httpx.Client(base_url=b.url, timeout=30) as api:
        end = wait_status(api, t["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert end["status"] == "COMPLETED" and end["run_count"] == 1, end
        assert [e["event_id"] for e in log_events(api, t["id"])] == list(range(1, 51))
    # One run row and run_count 1: one process was started, on one node.
    store = Store(cluster.common["METASTREAM_DB_URL"])
    try:
        assert len(store.runs.list(t["id"])) == 1
    finally:
        store.close()


def test_kill_policy_with_clients_on_both_gateways(cluster: Cluster) -> None:
    """Closing A's client changes nothing; B's gateway dying cancels it within the lease TTL."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    with httpx.Client(base_url=a.url, timeout=30) as api:
        t = create_task(api, synthetic={"events": 100_000, "rate": 50}, disconnect_policy="kill")

        async def scenario() -> float:
            url = f"/ws/tasks/{t['id']}"
            async with websockets.connect(b.ws_url + url, ping_interval=None) as on_b:
                async with websockets.connect(a.ws_url + url, ping_interval=None) as on_a:
                    for _ in range(5):
                        await asyncio.wait_for(on_a.recv(), 10)
                # A's client left: B's still watches, so the task goes on.
                await asyncio.sleep(3)  # past a lease round; nothing may happen
                assert api.get(f"/api/tasks/{t['id']}").json()["status"] == "RUNNING"
                for _ in range(5):
                    await asyncio.wait_for(on_b.recv(), 10)
                b.kill("gateway")
                return time.monotonic()

        killed_at = asyncio.run(scenario())
        end = wait_status(api, t["id"], {"CANCELLED", "COMPLETED", "FAILED"}, 30)
        took = time.monotonic() - killed_at
        assert end["status"] == "CANCELLED" and "policy kill" in end["last_message"], end
    ttl = float(cluster.common.get("METASTREAM_LEASE_TTL", "10"))
    assert took < ttl + 10, took


def test_bus_proxy_killed_and_restarted_mid_stream(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    n = 3000
    with httpx.Client(base_url=a.url, timeout=30) as api:
        t = create_task(api, synthetic={"events": n, "rate": 300})
        api.post(f"/api/tasks/{t['id']}/run")
        store = Store(cluster.common["METASTREAM_DB_URL"])
        seen: list[list[int]] = [[], []]

        async def scenario() -> list[list[int]]:
            watchers = [
                asyncio.create_task(
                    follow(s.ws_url, t["id"], timeout=120, on_events=seen[i].append)
                )
                for i, s in enumerate((a, b))
            ]
            await until(lambda: min(map(len, seen)) >= 100, "live events on both")
            cluster.bus.kill("bus")
            down_at = store.last_event_id(t["id"])
            await until(lambda: store.last_event_id(t["id"]) >= down_at + 150, "logged meanwhile")
            cluster.bus.start_component("bus")
            return [got.event_ids for got in await asyncio.gather(*watchers)]

        try:
            got = asyncio.run(scenario())
        finally:
            store.close()
        end = wait_status(api, t["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert end["status"] == "COMPLETED", end  # not judged unresponsive while the bus was down
        for ids in got:
            assert ids == list(range(1, n + 1)), (len(ids), ids[:5])


def test_a_subscriber_without_the_curve_keys_receives_nothing(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.nodes["a"].url, timeout=30) as api:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(cluster.common["METASTREAM_BUS_SUB"])  # plain, no CURVE
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            t = create_task(api, synthetic={"events": 200, "rate": 100})
            api.post(f"/api/tasks/{t['id']}/run")
            wait_status(api, t["id"], {"COMPLETED"}, 60)
            assert sub.poll(1000) == 0  # the whole run, then a second more: nothing came
        finally:
            sub.close()
            ctx.term()
