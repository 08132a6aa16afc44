"""The two cost curves: clients of one task, and concurrent tasks (see bench/curves.py)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench import procs
from bench.clients import latencies_ms, percentile
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, task, wait_for
from bench.measure import cpu, flat_out, mem, synthetic_stack

# (label, frame format, client offers permessage-deflate)
FORMATS = [
    ("seed JSON", "json", False),
    ("batched JSON", "batch", False),
    ("MessagePack batches", "msgpack-batch", False),
    ("seed JSON + deflate", "json", True),
]
DELIVERIES = 20_000  # per second in the paced clients run
MAX_RATE = 2_000  # events/s of one task in the paced run
WARMUP = 0.2  # s of each paced stream left out of latency (connection set-up, first pages)


def _paced(
    res: list[dict[str, Any]], t0: float, used: dict[str, float], n_deliveries: int
) -> dict[str, Any]:
    lat = latencies_ms(res, since=t0 + WARMUP)
    # Deliveries of events emitted after the start (a resumed client's catch-up left out).
    recv = [v for r in res for e, v in zip(r["emit"], r["recv"], strict=True) if e >= t0]
    span = max(recv) - t0 if recv else 0.0
    return {
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "delivered_per_s": round(len(recv) / span) if span > 0 else None,
        "lost_connections": sum(1 for r in res if r.get("error")),
        **{f"cpu_us_{k}": round(v / max(n_deliveries, 1) * 1e6, 1) for k, v in used.items()},
    }


def clients_curve(cx: Ctx, counts: list[int], out: list[dict[str, Any]]) -> None:
    """One task, N clients: saturation and paced runs for every format."""
    top = max(counts)
    with synthetic_stack(cx, "cc", top, METASTREAM_MAX_RUNNING="8") as (st, api):
        gw = st.procs["gateway"].pid
        got: dict[str, Any] = {}

        def go(t: str) -> None:
            got["rss_mib"], got["fds"] = mem(gw)
            got["cpu0"] = cpu([gw])
            got["t0"] = time.time()
            api.post(f"/api/tasks/{t}/run").raise_for_status()

        for n in counts:
            for label, fmt, deflate in FORMATS:
                point: dict[str, Any] = {"curve": "clients", "n": n, "format": label}
                try:
                    _clients_point(cx, st, api, go, got, point, n, fmt, deflate)
                except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
                    point["error"] = f"{type(exc).__name__}: {exc}"[:200]  # the next still run
                out.append(point)
                cx.log(f"  [curves] {point}")


def _clients_point(
    cx: Ctx,
    st: Any,
    api: httpx.Client,
    go: Any,
    got: dict[str, Any],
    point: dict[str, Any],
    n: int,
    fmt: str,
    deflate: bool,
) -> None:
    """One task, ``n`` clients, one format: a saturation run, then a paced one."""
    gw = st.procs["gateway"].pid
    nproc = 1 if n < 10 else min(4, n // 10 + 1)
    # Saturation: as fast as the task emits and the clients read.
    k = max(cx.size(200, 50), cx.size(200_000, 4_000) // n)
    run = flat_out(
        cx, st, api, n, k, procs=nproc, timeout=120, fmt=fmt, deflate=deflate,
        ready_timeout=30 + n / 10,
    )  # fmt: skip
    point["saturation_delivered_per_s"] = round(run.per_s)
    # Paced: DELIVERIES/s in all.
    rate = min(MAX_RATE, DELIVERIES / n)
    k = int(rate * cx.size(4.0, 1.0))
    tid = create(api, synthetic={"events": k, "rate": rate, "payload_bytes": B})
    urls = [f"{st.ws_url}/ws/tasks/{tid}?start=false"] * n
    res = cx.clients(
        urls,
        k,
        latency=True,
        procs=nproc,
        timeout=120,
        fmt=fmt,
        deflate=deflate,
        ready_timeout=30 + n / 10,
        after_ready=lambda: go(tid),
        # Ready once each connection's state came after its "connected" (it is set up and
        # live); clients without deflate read through the lean loop (bench/leanws.py): with
        # 1,000 connections the websockets library's ~30 us per message was the client
        # processes' whole CPU, on the cores the gateway is measured on.
        ready_messages=2,
        lean=True,
    )
    used = {"gateway": cpu([gw]) - got["cpu0"]}
    point |= _paced(res, got["t0"], used, sum(r["events"] for r in res))
    point |= {"rate": round(rate, 1), "rss_mib": round(got["rss_mib"], 1)}
    point["fds"] = got["fds"]


def tasks_curve(cx: Ctx, counts: list[int], total_rate: float, out: list[dict[str, Any]]) -> None:
    """T tasks at ``total_rate`` events/s in all, one client each, for every format."""
    for t in counts:
        _tasks_point(cx, t, total_rate, out)


def _tasks_point(cx: Ctx, t: int, total_rate: float, out: list[dict[str, Any]]) -> None:
    """One stack with ``t`` tasks running; one point per format."""
    window = cx.size(4.0, 1.0)
    env = {
        "METASTREAM_MAX_RUNNING": str(t + 4),
        "METASTREAM_CREATE_RATE": "0",  # 200 tasks at once exceed the default burst of 100
    }
    with synthetic_stack(cx, "ct", t, **env) as (st, api):
        gw, bus = st.procs["gateway"].pid, st.procs["bus"].pid
        sup = st.procs["supervisor"].pid
        rss_idle = mem(gw)[0]
        body = {"events": 10_000_000, "rate": total_rate / t, "payload_bytes": B}
        tids = [create(api, synthetic=body) for _ in range(t)]
        for tid in tids:
            api.post(f"/api/tasks/{tid}/run").raise_for_status()
        wait_for(
            lambda: all(task(api, x)["last_event_id"] > 0 for x in tids),
            120,
            "every task emitting",
            interval=0.5,
        )
        tasks_rss = sum(p.memory_full_info().uss for p in procs.tree(sup)[1:]) / 2**20
        for label, fmt, deflate in FORMATS:
            point: dict[str, Any] = {"curve": "tasks", "n": t, "format": label}
            # Live from now: resume after each task's last event, not a replay from 1. What
            # is logged meanwhile is replayed first and does not count: finding 200 tasks'
            # positions and connecting took longer than the events expected, so every client
            # ended within its replay and no latency sample was left (curves.md).
            k = int(total_rate / t * window)
            at = _positions(api, tids)
            urls = [f"{st.ws_url}/ws/tasks/{x}?last_event_id={at[x]}" for x in tids]
            got: dict[str, Any] = {}

            def go(got: dict[str, Any] = got) -> None:
                got["rss_mib"], got["fds"] = mem(gw)
                tree = [p.pid for p in procs.tree(sup)[1:]]
                got["pids"] = tree
                got["cpu0"] = (cpu([gw]), cpu([bus]), cpu(tree))
                got["t0"] = time.time()

            try:
                res = cx.clients(
                    urls,
                    k,
                    latency=True,
                    procs=min(4, t),
                    timeout=120,
                    fmt=fmt,
                    deflate=deflate,
                    ready_timeout=30 + t / 10,
                    after_ready=go,
                    live_only=True,
                )
            except (TimeoutError, RuntimeError) as exc:
                point["error"] = f"{type(exc).__name__}: {exc}"[:200]
                out.append(point)
                continue
            try:
                g0, b0, k0 = got["cpu0"]
                used = {
                    "gateway": cpu([gw]) - g0,
                    "proxy": cpu([bus]) - b0,
                    "tasks": cpu(got["pids"]) - k0,
                }
                point |= _paced(res, got["t0"], used, sum(r["events"] for r in res))
            except RuntimeError as exc:  # no samples (every client still catching up)
                point["error"] = f"{type(exc).__name__}: {exc}"[:200]
            point |= {"rate": total_rate, "rss_mib": round(got["rss_mib"], 1)}
            point |= {"fds": got["fds"], "rss_idle_mib": round(rss_idle, 1)}
            point["tasks_uss_mib"] = round(tasks_rss, 1)
            out.append(point)
            cx.log(f"  [curves] {point}")


def _positions(api: httpx.Client, task_ids: list[str]) -> dict[str, int]:
    """Each task's last event id as its row says, from the task list: 200 rows a request.

    The rows lag the logs by a moment (a few events to replay on connecting); asking each
    task's log for its last event instead took two requests a task, ~50 s for 200 tasks on a
    loaded machine, and every connection then began with that long a replay.
    """
    want, at, offset = set(task_ids), {}, 0
    while want - at.keys():
        page = api.get("/api/tasks", params={"limit": 200, "offset": offset})
        page.raise_for_status()
        rows = page.json()["tasks"]
        if not rows:
            raise RuntimeError(f"{len(want - at.keys())} tasks are not in the task list")
        at |= {r["id"]: int(r["last_event_id"]) for r in rows if r["id"] in want}
        offset += len(rows)
    return at
