"""``python -m bench.profile [throughput|latency|many]``: where the time goes, with py-spy.

Optional (the suite never needs it): ``.venv/bin/pip install py-spy``. Runs one scenario-like
load through a real stack, samples the gateway and one task process for a few seconds, and
prints the hottest frames (self time and inclusive). Raw folded stacks are kept under
``bench/results/profile-*.txt`` for flame graphs.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench import procs
from bench.clients import ClientGroup, latencies_ms, percentile, throughput

OUT = Path(__file__).parent / "results"
LOADS = {  # name: (tasks, synthetic spec per task, clients per task)
    "throughput": (1, {"events": 400_000, "rate": 0, "payload_bytes": 256}, 1),
    "latency": (1, {"events": 12_000, "rate": 2000, "payload_bytes": 256}, 1),
    "many": (50, {"events": 400, "rate": 40, "payload_bytes": 256}, 2),
}


def top(path: Path, n: int = 15) -> str:
    """Self and inclusive shares of a py-spy ``raw`` (folded) profile."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:  # per function, not line
            incl[f] += k
    lines = [f"{path.name}: {total} samples", "  self:"]
    lines += [f"    {100 * v / total:5.1f}% {f[:140]}" for f, v in own.most_common(n)]
    lines += ["  inclusive:"]
    lines += [f"    {100 * v / total:5.1f}% {f[:140]}" for f, v in incl.most_common(n * 2)]
    return "\n".join(lines)


def main(load: str = "throughput", seconds: int = 5) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    ntasks, spec, per_task = LOADS[load]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msp-") as work:
        env = {"METASTREAM_MAX_RUNNING": str(ntasks + 4)}
        with procs.stack(Path(work) / "s", env=env) as st:
            api = httpx.Client(base_url=st.url, timeout=30)
            body = {"requirement": "profile", "synthetic": spec}
            tids = [api.post("/api/tasks", json=body).json()["id"] for _ in range(ntasks)]
            urls = [f"{st.ws_url}/ws/tasks/{t}" for t in tids for _ in range(per_task)]
            spies = []
            with ClientGroup(urls, spec["events"], latency=True, procs=4, timeout=120) as g:
                g.wait_ready()
                time.sleep(0.5)  # past the task processes' start
                # Warm task processes are forks of the zygote and keep its command line:
                # the task is the newest process in the supervisor's tree.
                sup = psutil.Process(st.procs["supervisor"].pid)
                kids = sup.children(recursive=True)
                task_pid = max(kids, key=lambda p: p.create_time()).pid
                for name, pid, extra in (
                    ("gateway", st.procs["gateway"].pid, []),
                    ("task", task_pid, ["--threads", "--idle"]),
                ):
                    out = OUT / f"profile-{load}-{name}.txt"
                    argv = [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "200"]
                    argv += ["-f", "raw", "-o", str(out), "--nonblocking", *extra]
                    spies.append((out, subprocess.Popen(argv, stdout=subprocess.DEVNULL)))
                res = g.results()
            for _, p in spies:
                p.wait(seconds + 30)
            api.close()
    lat = latencies_ms(res)
    print(
        f"{load}: {throughput(res):,.0f} events/s delivered; latency p50 "
        f"{percentile(lat, 50):.2f} ms, p99 {percentile(lat, 99):.2f} ms\n"
    )
    for out, _ in spies:
        if out.exists():
            print(top(out), "\n")


if __name__ == "__main__":
    main(*sys.argv[1:2])
