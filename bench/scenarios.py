"""Streaming scenarios through the real stack, each against baselines run side by side.

Repetitions interleave the systems (stack, baseline, stack, baseline...) so that drift of a
shared machine hits all of them alike; every system gets one small untimed warm-up first.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench import procs
from bench.clients import latencies_ms, percentile, throughput
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, row, task, wait_for
from bench.table import Row

LATENCY_RATE = 2000  # events/s, scenario 1's fixed rate
# Latency is the steady state: events emitted in each stream's first 0.1 s are left out, for
# every system alike. They measure a process's start (scenario 4), and the systems start
# differently: the baseline publisher waits 0.5 s for its subscribers before its first event,
# a task emits ~10 ms after its process was forked. The whole-stream p99 is reported too.
WARMUP = 0.1


def _steady(results: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(latencies after each stream's first WARMUP seconds, all latencies), in ms."""
    first = min(r["emit"][0] for r in results if r.get("emit"))
    return latencies_ms(results, since=first + WARMUP), latencies_ms(results)


def s1_throughput(cx: Ctx, rows: list[Row]) -> None:
    """One task -> one client, events as fast as possible: client receive rate."""
    vs_raw = row(
        rows,
        "1",
        "throughput 1 task->1 client",
        "events/s",
        baseline_name="raw WebSocket ceiling",
        target=("min", 0.5),
    )
    vs_seed = row(
        rows,
        "1",
        "throughput 1 task->1 client",
        "events/s",
        baseline_name="seed design",
        target=("min", 1.5),
    )
    n = cx.size(100_000, 2_000)  # long enough for the steady state, not the ramp-up
    with (
        procs.stack(cx.home("s1")) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
        procs.baseline("raw", cx.home("raw")) as raw,
        procs.baseline("seed", cx.home("seed")) as seed,
    ):

        def on_stack(k: int) -> float:
            tid = create(api, synthetic={"events": k, "rate": 0, "payload_bytes": B})
            return throughput(cx.clients([f"{st.ws_url}/ws/tasks/{tid}"], k))

        def on_raw(k: int) -> float:
            return throughput(cx.clients([raw.ws(str(uuid.uuid4()), n=k, bytes=B)], k))

        def on_seed(k: int) -> float:
            return throughput(cx.clients([seed.ws(str(uuid.uuid4()), n=k, bytes=B)], k))

        for fn in (on_stack, on_raw, on_seed):
            fn(200)  # warm-up
        for rep in range(cx.reps):
            for name, fn, stat in (
                ("stack", on_stack, vs_raw.value),
                ("raw", on_raw, vs_raw.baseline),
                ("seed", on_seed, vs_seed.baseline),
            ):
                v = fn(n)
                assert stat is not None
                stat.samples.append(v)
                if name == "stack":
                    vs_seed.value.samples.append(v)
                cx.log(f"  [1 throughput] rep {rep + 1}/{cx.reps} {name}: {v:,.0f} events/s")


def s1_latency(cx: Ctx, rows: list[Row]) -> None:
    """One task -> one client at a fixed 2,000 events/s: emit-to-receive latency."""
    p50 = row(rows, "1", f"latency p50 @{LATENCY_RATE}/s", "ms", baseline_name="raw bus forwarder")
    p99 = row(
        rows,
        "1",
        f"latency p99 @{LATENCY_RATE}/s",
        "ms",
        baseline_name="raw bus forwarder",
        target=("max", 2.0),
    )
    p99_seed = row(rows, "1", f"latency p99 @{LATENCY_RATE}/s", "ms", baseline_name="seed design")
    p99_all = row(
        rows,
        "1",
        f"p99 @{LATENCY_RATE}/s over the whole stream",
        "ms",
        baseline_name="raw bus forwarder",
    )
    n = int(LATENCY_RATE * cx.size(3.0, 0.5))
    with (
        procs.stack(cx.home("s1l")) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
        procs.bus_baseline(cx.home("bus")) as (bus, bus_pub),
        procs.baseline("seed", cx.home("seed")) as seed,
    ):

        def on_stack(k: int) -> tuple[list[float], list[float]]:
            body = {"events": k, "rate": LATENCY_RATE, "payload_bytes": B}
            tid = create(api, synthetic=body)
            return _steady(cx.clients([f"{st.ws_url}/ws/tasks/{tid}"], k, latency=True))

        def on_bus(k: int) -> tuple[list[float], list[float]]:
            name = str(uuid.uuid4())
            spec = {"endpoint": bus_pub, "topics": [name], "n": k, "rate": LATENCY_RATE, "bytes": B}
            pubs: list = []
            try:
                res = cx.clients(
                    [bus.ws(name)],
                    k,
                    latency=True,
                    after_ready=lambda: pubs.append(procs.publisher(cx.work, spec)),
                )
            finally:
                for p in pubs:
                    procs.stop(p, timeout=15)
            return _steady(res)

        def on_seed(k: int) -> tuple[list[float], list[float]]:
            url = seed.ws(str(uuid.uuid4()), n=k, rate=LATENCY_RATE, bytes=B)
            return _steady(cx.clients([url], k, latency=True))

        for fn in (on_stack, on_bus, on_seed):
            fn(100)  # warm-up
        for rep in range(cx.reps):
            lat, lat_all = on_stack(n)
            p50.value.samples.append(percentile(lat, 50))
            p99.value.samples.append(percentile(lat, 99))
            p99_seed.value.samples.append(percentile(lat, 99))
            p99_all.value.samples.append(percentile(lat_all, 99))
            lb, lb_all = on_bus(n)
            assert p50.baseline and p99.baseline and p99_all.baseline and p99_seed.baseline
            p50.baseline.samples.append(percentile(lb, 50))
            p99.baseline.samples.append(percentile(lb, 99))
            p99_all.baseline.samples.append(percentile(lb_all, 99))
            ls, _ = on_seed(n)
            p99_seed.baseline.samples.append(percentile(ls, 99))
            cx.log(
                f"  [1 latency] rep {rep + 1}/{cx.reps} p50/p99 ms: stack "
                f"{percentile(lat, 50):.2f}/{percentile(lat, 99):.2f}, bus "
                f"{percentile(lb, 50):.2f}/{percentile(lb, 99):.2f}, seed "
                f"{percentile(ls, 50):.2f}/{percentile(ls, 99):.2f} (whole stream p99: stack "
                f"{percentile(lat_all, 99):.2f}, bus {percentile(lb_all, 99):.2f})"
            )


def s2_fanout(cx: Ctx, rows: list[Row]) -> None:
    """One task -> many clients, events as fast as possible: delivered messages/s in total."""
    clients = cx.size(100, 10)
    r = row(
        rows,
        "2",
        f"fan-out 1 task->{clients} clients",
        "msgs/s",
        baseline_name="raw WebSocket ceiling",
        target=("min", 0.6),
    )
    n, nproc = cx.size(1_000, 100), cx.size(4, 2)
    # One running slot, held by a slow blocker: the watched task stays QUEUED until every
    # client is connected, then the blocker is cancelled and it starts.
    with (
        procs.stack(cx.home("s2"), env={"METASTREAM_MAX_RUNNING": "1"}) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
        procs.baseline("raw", cx.home("raw")) as raw,
    ):

        def on_stack() -> float:
            blocker = create(api, synthetic={"events": 1_000_000, "rate": 5})
            api.post(f"/api/tasks/{blocker}/run").raise_for_status()
            tid = create(api, synthetic={"events": n, "rate": 0, "payload_bytes": B})
            urls = [f"{st.ws_url}/ws/tasks/{tid}"] * clients
            res = cx.clients(urls, n, procs=nproc, after_ready=lambda: _cancel(api, blocker))
            return throughput(res)

        def on_raw() -> float:
            urls = [raw.ws(str(uuid.uuid4()), n=n, bytes=B, gate=1) for _ in range(clients)]
            return throughput(cx.clients(urls, n, procs=nproc, after_ready=raw.go))

        for rep in range(cx.reps):
            v, b = on_stack(), on_raw()
            r.value.samples.append(v)
            assert r.baseline is not None
            r.baseline.samples.append(b)
            cx.log(f"  [2 fan-out] rep {rep + 1}/{cx.reps}: stack {v:,.0f}, raw {b:,.0f} msgs/s")


def _cancel(api: httpx.Client, task_id: str) -> None:
    api.post(f"/api/tasks/{task_id}/cancel").raise_for_status()


def s3_many(cx: Ctx, rows: list[Row]) -> None:
    """Many tasks x 2 clients at a fixed total rate: p99 latency and gateway CPU/message.

    Starting 50 interpreters is not what this measures, so each system runs once and the
    repetitions are consecutive windows of its steady state, after every task emits.
    """
    ntasks, rate, window = cx.size(50, 5), cx.size(2_000, 200), cx.size(5.0, 2.0)
    label = f"{ntasks} tasks x2 clients @{rate}/s"
    lat = row(rows, "3", f"{label}: latency p99", "ms", baseline_name="raw bus forwarder")
    cpu = row(rows, "3", f"{label}: server CPU/msg", "us", baseline_name="raw bus forwarder")
    nproc = cx.size(4, 2)
    env = {"METASTREAM_MAX_RUNNING": str(ntasks + 4)}
    span = window * cx.reps

    def measure(pid: int, t0: float) -> list[float]:
        """CPU seconds of ``pid`` at t0, t0 + window, ... (one window per repetition)."""
        marks = []
        for k in range(cx.reps + 1):
            time.sleep(max(0.0, t0 + k * window - time.time()))
            marks.append(procs.cpu_seconds(pid))
        return marks

    def summarise(res: list, t0: float, marks: list[float], which: str) -> None:
        for k in range(cx.reps):
            a, b = t0 + k * window, t0 + (k + 1) * window
            delivered = sum(1 for r in res for v in r.get("recv", ()) if a <= v <= b)
            p99 = percentile(latencies_ms(res, a, b), 99)
            per_msg = (marks[k + 1] - marks[k]) / max(delivered, 1) * 1e6
            getattr(lat, which).samples.append(p99)
            getattr(cpu, which).samples.append(per_msg)
            cx.log(
                f"  [3 many] {which} window {k + 1}/{cx.reps}: p99 {p99:.2f} ms, "
                f"CPU/msg {per_msg:.1f} us ({delivered} delivered)"
            )

    with (
        procs.stack(cx.home("s3"), env=env) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
        procs.bus_baseline(cx.home("bus")) as (bus, bus_pub),
    ):
        # The stack: tasks long enough to outlast everyone's start, cancelled after the windows.
        body = {"events": 1_000_000, "rate": rate / ntasks, "payload_bytes": B}
        tids = [create(api, synthetic=body) for _ in range(ntasks)]
        urls = [f"{st.ws_url}/ws/tasks/{t}" for t in tids for _ in range(2)]
        got: dict[str, Any] = {}

        def drive_stack() -> None:
            # The clients auto-start their tasks; the windows open once every task emits.
            def all_live() -> bool:
                return all(task(api, t)["last_event_id"] > 0 for t in tids)

            wait_for(all_live, 60, "every task emitting", interval=0.5)
            got["t0"] = time.time() + 1.0
            got["marks"] = measure(st.procs["gateway"].pid, got["t0"])
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda t: _cancel(api, t), tids))

        res = cx.clients(
            urls,
            1_000_000,
            latency=True,
            procs=nproc,
            timeout=120,
            after_ready=drive_stack,
            until_closed=True,
        )
        summarise(res, got["t0"], got["marks"], "value")

        # The raw bus forwarder: one publisher for all topics at the same total rate.
        topics = [str(uuid.uuid4()) for _ in range(ntasks)]
        urls = [bus.ws(t) for t in topics for _ in range(2)]
        per_topic = int(rate / ntasks * (span + 3.0))
        spec = {"endpoint": bus_pub, "topics": topics, "n": per_topic, "rate": rate, "bytes": B}
        pubs: list = []

        def drive_bus() -> None:
            pubs.append(procs.publisher(cx.work, spec))
            got["t0"] = time.time() + 1.5  # after the publisher's start and settle
            got["marks"] = measure(bus.pid, got["t0"])

        try:
            res = cx.clients(urls, per_topic, latency=True, procs=nproc, after_ready=drive_bus)
        finally:
            for p in pubs:
                procs.stop(p, timeout=15)
        summarise(res, got["t0"], got["marks"], "baseline")
