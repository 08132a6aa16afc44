"""``python -m bench.proxycost``: what checking every frame's sender costs the bus proxy.

The same publisher -> proxy -> SUB path twice, interleaved repetition by repetition: the
plain ``zmq.proxy`` (no sender checks) and the stack's proxy (a CURVE server on the publisher
side, a Python loop checking each frame's ``User-Id`` against its topic's task). Prints
messages/s at saturation and the p50/p99 publisher-to-subscriber latency at 2,000/s.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from bus import auth
from bus.client import Publisher
from bus.messages import Event, bus_encoder, new_task_id, topic


def _run(root: Path, master: bytes | None, n: int, rate: float) -> tuple[float, list[float]]:
    name = secrets.token_hex(4)
    front, back = f"ipc://{root}/in-{name}", f"ipc://{root}/out-{name}"
    # The proxy in a process of its own, as in a stack (in one process with the publisher
    # and the reader, its Python loop would also pay for their share of the GIL).
    code = f"from bus.proxy import serve; serve({front!r}, {back!r}, {master!r})"
    proxy = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    tid = new_task_id()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(back)
    sub.subscribe(tid.encode())
    keys = auth.task_keys(master, tid) if master is not None else None
    pub = Publisher(front, ctx, keys=keys)
    pub._sock.setsockopt(zmq.SNDHWM, 0)
    frame = topic(tid, "event")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the proxy is up and the subscription through
        pub.send(frame, b"warm-up")
        if sub.poll(50):
            sub.recv_multipart()
            break
    while sub.poll(100):
        sub.recv_multipart()
    lat: list[float] = []
    done = threading.Event()

    def receive() -> None:
        for _ in range(n):
            _t, body = sub.recv_multipart()
            lat.append(time.perf_counter() - float(body[:20]))
        done.set()

    reader = threading.Thread(target=receive)
    reader.start()
    ev = bus_encoder.encode(
        Event(event_id=1, task_id=tid, timestamp="t", agent_role="Engineer", event_type="MESSAGE")
    )
    start = time.perf_counter()
    for i in range(n):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        pub.send(frame, b"%-20.9f" % time.perf_counter() + ev)
    reader.join(60)
    elapsed = time.perf_counter() - start
    pub.close(0)
    sub.close(0)
    ctx.term()
    proxy.terminate()
    proxy.wait(10)
    return n / elapsed, lat


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.proxycost")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    master = secrets.token_hex(32).encode()
    rows: dict[str, dict[str, list[float]]] = {
        k: {"rate": [], "p50": [], "p99": []} for k in ("plain", "checked")
    }
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):
            for name, m in (("plain", None), ("checked", master)):
                rate, _ = _run(Path(tmp), m, args.n, 0)
                _, lat = _run(Path(tmp), m, 6000, 2000)
                lat.sort()
                rows[name]["rate"].append(rate)
                rows[name]["p50"].append(lat[len(lat) // 2] * 1e3)
                rows[name]["p99"].append(lat[int(len(lat) * 0.99)] * 1e3)
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    print(f"{'':8} {'msgs/s':>10} {'p50 ms':>8} {'p99 ms':>8}   ({args.reps} reps, medians)")
    for k in ("plain", "checked"):
        print(f"{k:8} {med[k]['rate']:>10,.0f} {med[k]['p50']:>8.3f} {med[k]['p99']:>8.3f}")
    print(
        f"checked/plain: throughput {med['checked']['rate'] / med['plain']['rate']:.2f}x, "
        f"p50 {med['checked']['p50'] / med['plain']['p50']:.2f}x, "
        f"p99 {med['checked']['p99'] / med['plain']['p99']:.2f}x"
    )


if __name__ == "__main__":
    main()
