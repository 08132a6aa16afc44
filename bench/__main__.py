"""``python -m bench``: run the scenarios, print the table, write it as JSON.

    python -m bench                  # every scenario, 3 repetitions
    python -m bench --quick          # tiny sizes, 1 repetition (the CI smoke test)
    python -m bench --only fanout    # one scenario (repeatable)

A scenario that fails still yields its rows, marked n/a with the reason in the notes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    cluster,
    curves,
    metrics_ab,
    persistence,
    postgres,
    scenarios,
    startup,
    workspace_share,
)
from bench.common import Ctx
from bench.table import Row, render, write_json

SCENARIOS: dict[str, Callable[[Ctx, list[Row]], None]] = {
    "throughput": scenarios.s1_throughput,
    "latency": scenarios.s1_latency,
    "fanout": scenarios.s2_fanout,
    "many": scenarios.s3_many,
    "start": startup.s4_start,
    "memory": startup.s5_memory,
    "persistence": persistence.s_persistence,
    "curves": curves.s_curves,  # its own table and plots (bench/results/curves.md)
    "pg-persistence": postgres.s_pg_persistence,
    "pg-stack": postgres.s_pg_stack,
    "metrics": metrics_ab.s1_metrics,  # scenario 1, metrics on vs off
    "cluster": cluster.s_cluster,  # two nodes + two gateways vs one (issue 15)
    "share": workspace_share.s_share,  # workspaces across nodes (issue 18)
}
# Minutes even at small sizes: --quick leaves them out unless named (python -m bench.curves
# --quick is their own smoke test; ``--quick --only cluster`` the cluster's).
NOT_QUICK = {"curves", "cluster"}
DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="scenario(s)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument(
        "--deflate", action="store_true", help="clients offer permessage-deflate, as browsers do"
    )
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    names = args.only or [n for n in SCENARIOS if not (args.quick and n in NOT_QUICK)]
    rows: list[Row] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    if load_before > _cpus():
        print(f"note: load average {load_before:.1f} on {_cpus()} CPUs: expect noisy results")
    with tempfile.TemporaryDirectory(prefix="msb-") as work:
        cx = Ctx(quick=args.quick, reps=reps, work=Path(work), deflate=args.deflate)
        for name in names:
            cx.log(f"scenario {name}: start")
            t0 = time.monotonic()
            mine: list[Row] = []
            try:
                SCENARIOS[name](cx, mine)
            except Exception as exc:  # keep going: the other scenarios still produce rows
                traceback.print_exc()
                for r in mine:
                    r.note = (r.note + "; " if r.note else "") + f"failed: {exc!r}"[:300]
            rows += mine
            cx.log(f"scenario {name}: done in {time.monotonic() - t0:.1f} s")
    table = render(rows)
    print()
    print(table)
    meta = {
        "quick": args.quick,
        "reps": reps,
        "scenarios": names,
        "deflate": args.deflate,
        "seconds": round(time.monotonic() - started, 1),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "cpus": _cpus(),
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(rows, args.json_out, meta)
    print(f"\nwritten to {args.json_out}")
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
