"""Cost curves: how throughput, latency, CPU and memory grow with clients and with tasks.

    python -m bench.curves                 # both curves, every format (minutes)
    python -m bench.curves --quick         # tiny sizes (seconds): also run by ``--quick`` bench
    python -m bench.curves --only clients --clients 1 10 100

Two curves, each for the seed's JSON, batched JSON, batched MessagePack, and the seed's JSON
with permessage-deflate offered by the client (as browsers and ``websockets`` do):

- **clients of one task** (1, 10, 100, 1,000): a saturation run (the task emits flat out,
  every client reads everything: delivered events/s) and a paced run at 20,000 deliveries/s
  in all (``rate`` = 20,000 / clients, at most 2,000 events/s): p50/p99 emit-to-receive
  latency, gateway CPU per delivery, gateway RSS and open fds with every client connected.
- **concurrent tasks** (1, 10, 50, 200 synthetic tasks) at a fixed total rate, one client
  each: the same, plus the CPU of the bus proxy and of the task processes, so that the cost
  of each hop is visible.

Writes ``curves.json``, ``curves.md`` (the table) and PNG plots to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import procs
from bench.clients import latencies_ms, percentile, throughput
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, task, wait_for
from bench.table import Row

RESULTS = Path(__file__).parent / "results"
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


def _mem(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of one process."""
    p = psutil.Process(pid)
    return p.memory_info().rss / 2**20, p.num_fds()


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _paced(
    res: list[dict[str, Any]], t0: float, cpu: dict[str, float], n_deliveries: int
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
        **{f"cpu_us_{k}": round(v / max(n_deliveries, 1) * 1e6, 1) for k, v in cpu.items()},
    }


def clients_curve(cx: Ctx, counts: list[int], out: list[dict[str, Any]]) -> None:
    """One task, N clients: saturation and paced runs for every format."""
    top = max(counts)
    env = {
        "METASTREAM_WS_MAX_PER_TASK": str(top + 10),
        "METASTREAM_WS_MAX_PER_CLIENT": str(top + 10),
        "METASTREAM_MAX_RUNNING": "8",
        "METASTREAM_WARM_METAGPT": "0",  # synthetic tasks only: no MetaGPT in the fork server
    }
    with (
        procs.stack(cx.home("cc"), env=env) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
    ):
        gw = st.procs["gateway"].pid
        got: dict[str, Any] = {}

        def go(t: str) -> None:
            got["rss_mib"], got["fds"] = _mem(gw)
            got["cpu0"] = _cpu([gw])
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
    tid = create(api, synthetic={"events": k, "rate": 0, "payload_bytes": B})
    urls = [f"{st.ws_url}/ws/tasks/{tid}?start=false"] * n
    res = cx.clients(
        urls,
        k,
        procs=nproc,
        timeout=120,
        fmt=fmt,
        deflate=deflate,
        ready_timeout=30 + n / 10,
        after_ready=lambda t=tid: api.post(f"/api/tasks/{t}/run").raise_for_status(),
    )
    point["saturation_delivered_per_s"] = round(throughput(res))
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
        after_ready=lambda t=tid: go(t),
    )
    cpu = {"gateway": _cpu([gw]) - got["cpu0"]}
    point |= _paced(res, got["t0"], cpu, sum(r["events"] for r in res))
    point |= {"rate": round(rate, 1), "rss_mib": round(got["rss_mib"], 1)}
    point["fds"] = got["fds"]


def tasks_curve(cx: Ctx, counts: list[int], total_rate: float, out: list[dict[str, Any]]) -> None:
    """T tasks at ``total_rate`` events/s in all, one client each, for every format."""
    for t in counts:
        _tasks_point(cx, t, total_rate, out)


def _tasks_point(cx: Ctx, t: int, total_rate: float, out: list[dict[str, Any]]) -> None:
    """One stack with ``t`` tasks running; one point per format."""
    env = {
        "METASTREAM_MAX_RUNNING": str(t + 4),
        "METASTREAM_WS_MAX_PER_CLIENT": str(t + 10),
        "METASTREAM_CREATE_RATE": "0",  # 200 tasks at once exceed the default burst of 100
        "METASTREAM_WARM_METAGPT": "0",  # synthetic tasks only: no MetaGPT in the fork server
    }
    window = cx.size(4.0, 1.0)
    with (
        procs.stack(cx.home("ct"), env=env) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
    ):
        gw, bus = st.procs["gateway"].pid, st.procs["bus"].pid
        sup = st.procs["supervisor"].pid
        rss_idle = _mem(gw)[0]
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
            # Live from now: resume after each task's last logged event, not a replay from 1
            # (what is logged meanwhile is replayed first: 3 s more than the window).
            k = int(total_rate / t * (window + 3.0))
            urls = [f"{st.ws_url}/ws/tasks/{x}?last_event_id={_logged(api, x)}" for x in tids]
            got: dict[str, Any] = {}

            def go(got: dict[str, Any] = got) -> None:
                got["rss_mib"], got["fds"] = _mem(gw)
                tree = [p.pid for p in procs.tree(sup)[1:]]
                got["pids"] = tree
                got["cpu0"] = (_cpu([gw]), _cpu([bus]), _cpu(tree))
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
                )
            except (TimeoutError, RuntimeError) as exc:
                point["error"] = f"{type(exc).__name__}: {exc}"[:200]
                out.append(point)
                continue
            try:
                g0, b0, k0 = got["cpu0"]
                cpu = {
                    "gateway": _cpu([gw]) - g0,
                    "proxy": _cpu([bus]) - b0,
                    "tasks": _cpu(got["pids"]) - k0,
                }
                point |= _paced(res, got["t0"], cpu, sum(r["events"] for r in res))
            except RuntimeError as exc:  # no samples (every client still catching up)
                point["error"] = f"{type(exc).__name__}: {exc}"[:200]
            point |= {"rate": total_rate, "rss_mib": round(got["rss_mib"], 1)}
            point |= {"fds": got["fds"], "rss_idle_mib": round(rss_idle, 1)}
            point["tasks_uss_mib"] = round(tasks_rss, 1)
            out.append(point)
            cx.log(f"  [curves] {point}")


def _logged(api: httpx.Client, task_id: str) -> int:
    """The id of a task's last logged event (the task row's own lags under load)."""
    after = int(task(api, task_id)["last_event_id"])
    while True:
        page = api.get(f"/api/tasks/{task_id}/events", params={"after": after, "limit": 10000})
        page.raise_for_status()
        body = page.json()
        after = int(body["next_after"])
        if not body["has_more"]:
            return after


def deflate_ab(cx: Ctx, n: int, out: list[dict[str, Any]]) -> None:
    """Clients offering permessage-deflate: compress every message, or only long ones.

    Saturation fan-out of one task to ``n`` clients, per server threshold
    (``METASTREAM_WS_DEFLATE_MIN_BYTES``), with the seed format's ~450-byte event messages
    and with batches (tens of KiB, which compress well).
    """
    for threshold in (0, 1024):
        env = {
            "METASTREAM_WS_DEFLATE_MIN_BYTES": str(threshold),
            "METASTREAM_WS_MAX_PER_TASK": str(n + 10),
            "METASTREAM_WS_MAX_PER_CLIENT": str(n + 10),
            "METASTREAM_WARM_METAGPT": "0",
        }
        with (
            procs.stack(cx.home("cd"), env=env) as st,
            httpx.Client(base_url=st.url, timeout=30) as api,
        ):
            gw = st.procs["gateway"].pid
            cases = [("seed JSON", "json", True), ("batched JSON", "batch", True)]
            if threshold:
                cases.append(("seed JSON", "json", False))
            for label, fmt, deflate in cases:
                name = f"{label} {'+ deflate >= ' + str(threshold) + ' B' if deflate else ''}"
                point: dict[str, Any] = {"curve": "deflate", "n": n, "format": name.strip()}
                k = max(200, cx.size(100_000, 4_000) // n)
                tid = create(api, synthetic={"events": k, "rate": 0, "payload_bytes": B})
                cpu0 = _cpu([gw])
                try:
                    res = cx.clients(
                        [f"{st.ws_url}/ws/tasks/{tid}?start=false"] * n,
                        k,
                        procs=min(4, n),
                        timeout=120,
                        fmt=fmt,
                        deflate=deflate,
                        after_ready=lambda t=tid: api.post(f"/api/tasks/{t}/run"),
                    )
                    delivered = sum(r["events"] for r in res)
                    point["saturation_delivered_per_s"] = round(throughput(res))
                    point["cpu_us_gateway"] = round((_cpu([gw]) - cpu0) / delivered * 1e6, 1)
                except (TimeoutError, RuntimeError) as exc:
                    point["error"] = f"{type(exc).__name__}: {exc}"[:200]
                out.append(point)
                cx.log(f"  [curves] {point}")


def replay(cx: Ctx, events: int, out: list[dict[str, Any]]) -> None:
    """A finished task's whole log to one client, per format: delivered events/s."""
    env = {"METASTREAM_WARM_METAGPT": "0"}
    with (
        procs.stack(cx.home("cr"), env=env) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
    ):
        tid = create(api, synthetic={"events": events, "rate": 0, "payload_bytes": B})
        api.post(f"/api/tasks/{tid}/run").raise_for_status()
        wait_for(lambda: task(api, tid)["status"] == "COMPLETED", 300, "the task to end", 0.5)
        gw = st.procs["gateway"].pid
        for label, fmt, deflate in [*FORMATS, ("MessagePack", "msgpack", False)]:
            point: dict[str, Any] = {"curve": "replay", "n": events, "format": label}
            cpu0 = _cpu([gw])
            try:
                res = cx.clients(
                    [f"{st.ws_url}/ws/tasks/{tid}"], events, timeout=120, fmt=fmt, deflate=deflate
                )
                point["saturation_delivered_per_s"] = round(throughput(res))
                point["cpu_us_gateway"] = round((_cpu([gw]) - cpu0) / events * 1e6, 2)
            except (TimeoutError, RuntimeError) as exc:
                point["error"] = f"{type(exc).__name__}: {exc}"[:200]
            out.append(point)
            cx.log(f"  [curves] {point}")


def workers_ab(cx: Ctx, n: int, out: list[dict[str, Any]]) -> None:
    """One gateway process against two workers on one port: saturation fan-out to ``n``."""
    for workers in (1, 2):
        env = {
            "METASTREAM_GATEWAY_WORKERS": str(workers),
            "METASTREAM_WS_MAX_PER_TASK": str(n + 10),
            "METASTREAM_WS_MAX_PER_CLIENT": str(n + 10),
            "METASTREAM_WARM_METAGPT": "0",
        }
        with (
            procs.stack(cx.home("cw"), env=env) as st,
            httpx.Client(base_url=st.url, timeout=30) as api,
        ):
            for label, fmt in (("seed JSON", "json"), ("batched JSON", "batch")):
                point: dict[str, Any] = {
                    "curve": "workers",
                    "n": n,
                    "format": f"{label}, {workers} gateway process(es)",
                }
                k = max(200, cx.size(100_000, 4_000) // n)
                tid = create(api, synthetic={"events": k, "rate": 0, "payload_bytes": B})
                tree = [p.pid for p in procs.tree(st.procs["gateway"].pid)]
                cpu0 = _cpu(tree)
                try:
                    res = cx.clients(
                        [f"{st.ws_url}/ws/tasks/{tid}?start=false"] * n,
                        k,
                        procs=min(4, n),
                        timeout=120,
                        fmt=fmt,
                        after_ready=lambda t=tid: api.post(f"/api/tasks/{t}/run"),
                    )
                    delivered = sum(r["events"] for r in res)
                    point["saturation_delivered_per_s"] = round(throughput(res))
                    point["cpu_us_gateway"] = round((_cpu(tree) - cpu0) / delivered * 1e6, 1)
                    point["rss_mib"] = round(sum(_mem(p)[0] for p in tree), 1)
                except (TimeoutError, RuntimeError) as exc:
                    point["error"] = f"{type(exc).__name__}: {exc}"[:200]
                out.append(point)
                cx.log(f"  [curves] {point}")


def table(points: list[dict[str, Any]]) -> str:
    cols = [
        ("curve", "curve"),
        ("n", "clients/tasks"),
        ("format", "format"),
        ("saturation_delivered_per_s", "saturation deliveries/s"),
        ("rate", "paced events/s (per task)"),
        ("delivered_per_s", "paced deliveries/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("cpu_us_gateway", "gateway CPU us/delivery"),
        ("cpu_us_proxy", "proxy CPU us/delivery"),
        ("cpu_us_tasks", "tasks CPU us/event"),
        ("rss_mib", "gateway RSS MiB"),
        ("fds", "gateway fds"),
        ("lost_connections", "lost conns"),
        ("error", "not measured"),
    ]
    lines = [
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for p in points:
        lines.append("| " + " | ".join(_cell(p.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def plot(points: list[dict[str, Any]], into: Path) -> list[Path]:
    """One PNG per curve: throughput, p99 and gateway CPU per delivery against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for curve, xlabel in (("clients", "clients of one task"), ("tasks", "concurrent tasks")):
        # (the deflate A/B is one point per case: the table shows it)
        pts = [p for p in points if p["curve"] == curve]
        if not pts:
            continue
        metrics = [
            ("saturation_delivered_per_s", "saturation deliveries/s"),
            ("p99_ms", "p99 latency, ms (paced)"),
            ("cpu_us_gateway", "gateway CPU µs per delivery"),
            ("rss_mib", "gateway RSS, MiB"),
        ]
        metrics = [m for m in metrics if any(p.get(m[0]) is not None for p in pts)]
        fig, grid = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
        axes = list(grid[0])
        for ax, (key, title) in zip(axes, metrics, strict=True):
            for label, _, _ in FORMATS:
                xs = [p["n"] for p in pts if p["format"] == label and p.get(key) is not None]
                ys = [p[key] for p in pts if p["format"] == label and p.get(key) is not None]
                if xs:
                    ax.plot(xs, ys, marker="o", label=label)
            ax.set_xscale("log")
            if key != "rss_mib":
                ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = into / f"curve-{curve}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def run(
    cx: Ctx,
    clients: list[int],
    tasks: list[int],
    total_rate: float,
    into: Path,
    deflate_clients: int = 0,
    workers_clients: int = 0,
    replay_events: int = 0,
) -> Path:
    points: list[dict[str, Any]] = []
    try:
        if clients:
            clients_curve(cx, clients, points)
        if tasks:
            tasks_curve(cx, tasks, total_rate, points)
        if deflate_clients:
            deflate_ab(cx, deflate_clients, points)
        if workers_clients:
            workers_ab(cx, workers_clients, points)
        if replay_events:
            replay(cx, replay_events, points)
    finally:  # what was measured is kept, even if a later point failed
        into.mkdir(parents=True, exist_ok=True)
        meta = {"quick": cx.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (into / "curves.json").write_text(json.dumps({"meta": meta, "points": points}, indent=1))
        (into / "curves.md").write_text(table(points) + "\n")
        if points:
            plot(points, into)
    return into / "curves.md"


def s_curves(cx: Ctx, rows: list[Row]) -> None:
    """The bench scenario: writes its own table and plots (no rows in the main table)."""
    clients = cx.size([1, 10, 100, 1000], [1, 10])
    tasks = cx.size([1, 10, 50, 200], [2])
    into = cx.work / "curves" if cx.quick else RESULTS
    ab = cx.size(100, 0)  # clients in the deflate and workers A/Bs (not in --quick)
    path = run(cx, clients, tasks, cx.size(1000.0, 100.0), into, ab, ab, cx.size(100_000, 0))
    cx.log(f"  cost curves written to {path.parent}")


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["clients", "tasks", "deflate", "workers", "replay"])
    parser.add_argument("--deflate-clients", type=int, help="clients in the deflate A/B (100)")
    parser.add_argument("--clients", type=int, nargs="+")
    parser.add_argument("--tasks", type=int, nargs="+")
    parser.add_argument("--total-rate", type=float)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msc-") as work:
        cx = Ctx(quick=args.quick, reps=1, work=Path(work))
        clients = args.clients or cx.size([1, 10, 100, 1000], [1, 10])
        tasks = args.tasks or cx.size([1, 10, 50, 200], [2])
        rate = args.total_rate or cx.size(1000.0, 100.0)
        only = args.only
        path = run(
            cx,
            clients if only in (None, "clients") else [],
            tasks if only in (None, "tasks") else [],
            rate,
            args.out,
            (args.deflate_clients or cx.size(100, 0)) if only in (None, "deflate") else 0,
            (args.deflate_clients or cx.size(100, 0)) if only in (None, "workers") else 0,
            cx.size(100_000, 5_000) if only in (None, "replay") else 0,
        )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
