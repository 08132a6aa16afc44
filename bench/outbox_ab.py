"""Outbox before/after: scenario 4b's path measured for two commits, repetitions interleaved.

    python -m bench.outbox_ab --ref 16acd4d^ --reps 3

Each repetition runs ``bench/outbox_probe.py`` (this tree's harness) twice in fresh
interpreters, once importing the code of ``--ref`` (checked out into a temporary git worktree,
removed afterwards) and once this tree's, alternating old, new, old, new..., so that load on a
shared machine hits both alike. Two versions of one package cannot share an interpreter, hence
a process per measurement. Throughput is flat out with the event log on SQLite; latency is
emit -> subscriber receipt at a steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "outbox_probe.py"
METRICS = (("events_per_s", "events/s (flat out)", "max"), ("p50_ms", "latency p50 ms", "min"),
           ("p99_ms", "latency p99 ms", "min"))  # fmt: skip


def _probe(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, str(PROBE), str(args.events), str(args.rate), str(args.lat_events)]
    out = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"probe failed in {tree}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_ab", description=__doc__)
    parser.add_argument("--ref", required=True, help="the 'before' commit")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000, help="flat-out events per rep")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced events/s (latency)")
    parser.add_argument("--lat-events", type=int, default=3000, help="paced events per rep")
    args = parser.parse_args(argv)
    old = Path(tempfile.mkdtemp(prefix="oldoutbox-"))
    subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(old), args.ref],
                   check=True, capture_output=True)  # fmt: skip
    samples: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    loads = [os.getloadavg()[0]]
    try:
        for rep in range(args.reps):
            for name, tree in (("old", old), ("new", HERE)):
                samples[name].append(_probe(tree, args))
                loads.append(os.getloadavg()[0])
                print(f"rep {rep + 1} {name}: {samples[name][-1]}", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(old)],
                       check=False)  # fmt: skip
    print(f"\nOutbox A/B: before = {args.ref}, after = this tree; {args.reps} interleaved reps")
    print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f}\n")
    print("| metric | before (median, range) | after (median, range) | after/before |")
    print("|---|---|---|---|")
    for key, label, _better in METRICS:
        b = [s[key] for s in samples["old"]]
        a = [s[key] for s in samples["new"]]
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"| {label} | {mb:,.2f} ({min(b):,.2f}-{max(b):,.2f}) | "
              f"{ma:,.2f} ({min(a):,.2f}-{max(a):,.2f}) | {ma / mb:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
