"""``python -m bench.outliers``: when in a paced stream the late events are, task -> bus only.

A latency tail made by something periodic (a checkpoint, a state write, a heartbeat) shows as
late events at a fixed offset from the task's start, run after run; a noisy neighbour shows as
late events anywhere. This runs a stack, subscribes to a task's events with a plain SUB socket
(no gateway, no WebSocket; or, with ``--via ws``, the benchmark's WebSocket client through
the gateway), runs a synthetic task at a fixed rate, and prints per repetition the
percentiles and each run of consecutive late events: ``offset_ms:count,max_ms``.

    python -m bench.outliers [--via bus|ws] [--rate 2000] [--events 6000] [--reps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import zmq

from bench import procs
from bench.clients import ClientGroup, percentile
from bench.common import create
from bus.messages import Event, bus_decoder
from core import settings


def _receive(endpoint: str, topic: bytes, n: int, out: list[tuple[int, float, float]]) -> None:
    """(seq, emitted, received) for each event, until the last one or 10 s of silence."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    try:
        while (not out or out[-1][0] < n) and sub.poll(10_000):
            _topic, body = sub.recv_multipart()
            now = time.time()
            msg = bus_decoder.decode(body)
            if isinstance(msg, Event):
                out.append((int(msg.payload["seq"]), float(msg.payload["t"]), now))
    finally:
        sub.close(linger=0)
        ctx.term()


def _via_ws(url: str, n: int) -> list[tuple[int, float, float]]:
    """The same through the gateway, received by the benchmark's client (which starts it)."""
    with ClientGroup([url], n, latency=True, procs=1, timeout=60) as group:
        group.wait_ready(30)
        (res,) = group.results()
    return [(i, e, r) for i, (e, r) in enumerate(zip(res["emit"], res["recv"], strict=True), 1)]


def _report(rep: int, got: list[tuple[int, float, float]], late_ms: float) -> None:
    steady = got[len(got) // 30 :]  # the start-up ramp is scenario 4's business
    t0 = steady[0][1]
    lat = [(r - e) * 1000 for _, e, r in steady]
    p = {q: percentile(lat, q) for q in (50, 97, 99)}  # as the table's rows compute them
    runs: list[list[tuple[int, float, float]]] = []
    for seq, e, r in steady:
        ms = (r - e) * 1000
        if ms <= late_ms:
            continue
        if runs and seq == runs[-1][-1][0] + 1:
            runs[-1].append((seq, e, ms))
        else:
            runs.append([(seq, e, ms)])
    late = sum(len(r) for r in runs)
    print(
        f"rep {rep}: {len(steady)} events, p50 {p[50]:.3f} p97 {p[97]:.3f} p99 {p[99]:.3f} ms; "
        f"{late} later than {late_ms} ms in {len(runs)} runs:",
        flush=True,
    )
    cells = [f"{(r[0][1] - t0) * 1000:.0f}:{len(r)},{max(x[2] for x in r):.2f}" for r in runs]
    for i in range(0, len(cells), 10):
        print("   ", " ".join(cells[i : i + 10]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--late-ms", type=float, default=0.3)
    ap.add_argument("--via", choices=["bus", "ws"], default="bus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="outliers") as tmp:
        print("starting a stack (the fork server imports for a few seconds)...", flush=True)
        with procs.stack(Path(tmp) / "s") as st, httpx.Client(base_url=st.url, timeout=30) as api:
            cfg = settings.load(st.env)
            for rep in range(1, args.reps + 1):
                spec = {"events": args.events, "rate": args.rate, "payload_bytes": 256}
                tid = create(api, synthetic=spec)
                if args.via == "ws":
                    _report(rep, _via_ws(f"{st.ws_url}/ws/tasks/{tid}", args.events), args.late_ms)
                    continue
                got: list[tuple[int, float, float]] = []
                rx = threading.Thread(
                    target=_receive, args=(cfg.bus_sub, tid.encode(), args.events, got)
                )
                rx.start()
                # Events the subscription is too late for are simply not in the sample: the
                # first thirtieth is left out anyway.
                api.post(f"/api/tasks/{tid}/run").raise_for_status()
                rx.join(args.events / args.rate + 30)
                if len(got) < args.events // 2:
                    raise SystemExit(f"rep {rep}: only {len(got)} of {args.events} events came")
                _report(rep, got, args.late_ms)


if __name__ == "__main__":
    main()
