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

from bench.common import Ctx
from bench.curve_ab import deflate_ab, replay, workers_ab
from bench.curve_report import plot, table
from bench.curve_runs import FORMATS as FORMATS
from bench.curve_runs import clients_curve, tasks_curve
from bench.table import Row

RESULTS = Path(__file__).parent / "results"


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
