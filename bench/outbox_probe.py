"""One measurement of a task's outbox (scenario 4b's path), for whichever tree is importable.

Run as a script, ``PYTHONPATH=<tree> python bench/outbox_probe.py N RATE LAT_N``: it imports
the outbox, store, publisher and proxy from ``<tree>`` and prints one JSON line, so that
``bench.outbox_ab`` can measure two commits with the same harness. It uses only what the
outbox offered before its split too (constructor, start, emit, close).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from bus.client import Publisher
from bus.messages import State, new_task_id, utcnow
from bus.proxy import Proxy
from runner.task.outbox import Outbox
from store import Store


def _measure(store: Store, front: str, back: str, n: int, rate: float) -> list[float]:
    """Emit ``n`` events (at ``rate``/s, 0 = flat out); each one's emit -> receipt seconds."""
    task_id = new_task_id()
    store.create_task(task_id, "bench", False, {}, utcnow())
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, f"{task_id}/event".encode())
    sub.connect(back)
    pub = Publisher(front, ctx=ctx)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # join the PUB/SUB path before timing
        pub.send(f"{task_id}/event".encode(), b"probe")
        if sub.poll(20):
            sub.recv_multipart()
            break
    received: list[float] = []

    def count() -> None:
        while len(received) < n and sub.poll(10_000):
            if sub.recv_multipart()[1] != b"probe":
                received.append(time.perf_counter())

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    out = Outbox(store, pub, task_id, 1, State(task_id=task_id, status="RUNNING"), 1.0)
    out.start()
    pad = "x" * 100
    sent: list[float] = []
    t0 = time.perf_counter()
    for seq in range(1, n + 1):
        if rate:
            due = t0 + seq / rate
            while (ahead := due - time.perf_counter()) > 0:
                time.sleep(ahead)
        sent.append(time.perf_counter())
        out.emit("Engineer", "MESSAGE", {"seq": seq, "t": time.time(), "pad": pad})
    out.close()
    counter.join(30)
    pub.close(linger_ms=0)
    sub.close(linger=0)
    ctx.term()
    if len(received) != n:
        raise RuntimeError(f"{len(received)} of {n} events arrived")
    # Events arrive in order: the i-th received is the i-th sent.
    return [r - s for r, s in zip(received, sent, strict=True)] + [received[-1] - sent[0]]


def main() -> None:
    n, rate, lat_n = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    with tempfile.TemporaryDirectory(prefix="msp-ab-") as tmp:
        root = Path(tmp)
        proxy = Proxy(f"ipc://{root}/in.sock", f"ipc://{root}/out.sock")
        proxy.start()
        try:
            store = Store(f"sqlite:///{root}/db.sqlite", root / "events")
            store.create_schema()
            front, back = proxy.frontend_endpoint, proxy.backend_endpoint
            flat = _measure(store, front, back, n, 0.0)
            paced = sorted(_measure(store, front, back, lat_n, rate)[:-1])
            store.close()
        finally:
            proxy.stop()
    print(
        json.dumps(
            {
                "events_per_s": n / flat[-1],
                "p50_ms": paced[len(paced) // 2] * 1e3,
                "p99_ms": paced[int(len(paced) * 0.99)] * 1e3,
            }
        )
    )


if __name__ == "__main__":
    main()
