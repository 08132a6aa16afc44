"""``python -m bench.fanout_profile [--clients N] [--rate R] [--format F] [--workers W]``.

One task's live fan-out to many clients, looked at closely: N lean clients (bench/leanws.py,
in 4 processes) of one synthetic task emitting R events/s for ``--seconds``. Prints the
emit-to-receive p50/p90/p99, how each event spreads over the connections (when the first, the
median and the last connection got it), the gateway's CPU per delivery in the steady state
(psutil, every gateway process), the clients' CPU, and, with py-spy installed
(``.venv/bin/pip install py-spy``), the gateway's hottest frames. ``--pin`` puts the gateway
alone on CPU 0 and everything else of the stack on CPU 1: what the gateway does with a core
of its own. The 1,000-client figures in bench/README.md come from it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench import procs
from bench.clients import ClientGroup, latencies_ms, percentile
from bench.profile import top


def _cpu(ps: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in ps)


def _spread(res: list[dict]) -> str:
    """Median over events of the first, median and last connection's latency."""
    per: dict[float, list[float]] = collections.defaultdict(list)
    for r in res:
        for e, t in zip(r.get("emit", []), r.get("recv", []), strict=True):
            per[e].append((t - e) * 1000)
    rows = [sorted(v) for _, v in sorted(per.items())[20:-5]]  # past the start, before the end
    if not rows:
        return "no events"

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    first, mid, last = (
        med([r[0] for r in rows]),
        med([r[len(r) // 2] for r in rows]),
        med([r[-1] for r in rows]),
    )
    return (
        f"per event (medians): first connection {first:.1f} ms, median {mid:.1f}, last {last:.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout_profile", description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--format", default="json", choices=["json", "batch", "msgpack-batch"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pin", action="store_true")
    args = ap.parse_args(argv)
    n, k = args.clients, int(args.rate * args.seconds)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    env = {
        "METASTREAM_GATEWAY_WORKERS": str(args.workers),
        "METASTREAM_WARM_METAGPT": "0",
        "METASTREAM_WS_MAX_PER_TASK": str(n + 10),
        "METASTREAM_WS_MAX_PER_CLIENT": str(n + 10),
    }
    out = Path(tempfile.gettempdir()) / f"fanout-gateway-{args.format}.txt"
    with (
        tempfile.TemporaryDirectory(prefix="msf-") as work,
        procs.stack(Path(work) / "s", env=env) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
    ):
        synthetic = {"events": k, "rate": args.rate, "payload_bytes": 400}
        tid = api.post("/api/tasks", json={"requirement": "fan-out", "synthetic": synthetic})
        tid.raise_for_status()
        task_id = tid.json()["id"]
        gw = psutil.Process(st.procs["gateway"].pid)
        gws = [gw, *gw.children(recursive=True)]
        urls = [f"{st.ws_url}/ws/tasks/{task_id}?start=false"] * n
        with ClientGroup(
            urls, k, latency=True, procs=4, timeout=args.seconds + 120, fmt=args.format,
            lean=True, ready_messages=2,
        ) as g:  # fmt: skip
            print(f"connecting {n} clients...", flush=True)
            g.wait_ready(30 + n / 10)
            clients = [
                p
                for p in psutil.Process().children(recursive=True)
                if "bench.clients" in " ".join(p.cmdline())
            ]
            if args.pin:
                for p in psutil.Process().children(recursive=True):
                    p.cpu_affinity([1])
                for p in gws:
                    p.cpu_affinity([0])
            api.post(f"/api/tasks/{task_id}/run").raise_for_status()
            print(f"streaming {k} events at {args.rate:g}/s...", flush=True)
            time.sleep(min(4.0, args.seconds / 5))  # past the task's start
            steady = min(10.0, args.seconds / 2)
            sp = None
            if Path(spy).exists():
                argv_spy = [spy, "record", "-p", str(gw.pid), "-d", str(int(steady))]
                argv_spy += ["-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"]
                sp = subprocess.Popen(argv_spy, stdout=subprocess.DEVNULL)
            c0, t0, cc0 = _cpu(gws), time.monotonic(), _cpu(clients)
            time.sleep(steady)
            c1, t1, cc1 = _cpu(gws), time.monotonic(), _cpu(clients)
            res = g.results()
            if sp is not None:
                sp.wait(60)
    lat = latencies_ms(res)
    core = (c1 - c0) / (t1 - t0)
    got = sum(r["events"] for r in res)
    lost = sum(1 for r in res if r.get("error"))
    print(
        f"{args.format}, {n} clients, {args.rate:g} events/s, {args.workers} gateway process(es)"
        f"{', pinned' if args.pin else ''}: p50 {percentile(lat, 50):.1f} ms, p90 "
        f"{percentile(lat, 90):.1f}, p99 {percentile(lat, 99):.1f}; {got} deliveries, "
        f"{lost} connections lost"
    )
    print(_spread(res))
    print(
        f"steady state: the gateway {core:.2f} core = {core / (n * args.rate) * 1e6:.1f} us per "
        f"delivery; the client processes {(cc1 - cc0) / (t1 - t0):.2f} core in all"
    )
    if out.exists():
        print(top(out, 15))


if __name__ == "__main__":
    main()
