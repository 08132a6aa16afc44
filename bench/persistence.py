"""Persistence cost at the source: the task's outbox with the event log on vs off.

Both runs use the real Outbox, Publisher, proxy and a SUB counting what arrives; the only
difference is the store (the real per-task SQLite log vs one that writes nothing), so the
ratio is what durability costs at full speed.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from bench.common import Ctx
from bench.table import Row, Stat
from bus.client import Publisher
from bus.messages import State, new_task_id, utcnow
from bus.proxy import Proxy
from runner.task.outbox import Outbox
from store import Store


class NullStore:
    """Accepts every write and keeps nothing (the 'persistence off' baseline)."""

    local_commits = True

    def open_events(self, *_a: Any, **_k: Any) -> None:
        return None

    def append_events(self, *_a: Any, **_k: Any) -> None:
        return None

    def save_state(self, *_a: Any, **_k: Any) -> None:
        return None


def _run(store: Any, task_id: str, n: int, front: str, back: str) -> float:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, f"{task_id}/event".encode())
    sub.connect(back)
    pub = Publisher(front, ctx=ctx)
    # Join the PUB/SUB path before timing (bounded, no fixed sleep).
    deadline = time.monotonic() + 10
    probe = f"{task_id}/event".encode()
    while time.monotonic() < deadline:
        pub.send(probe, b"probe")
        if sub.poll(20):
            sub.recv_multipart()
            break
    done = threading.Event()
    last = [0.0]

    def count() -> None:
        got = 0
        while got < n and sub.poll(10_000):
            frames = sub.recv_multipart()
            if frames[1] != b"probe":
                got += 1
        last[0] = time.perf_counter()
        done.set()

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    out = Outbox(store, pub, task_id, 1, State(task_id=task_id, status="RUNNING"), 1.0)
    out.start()
    pad = "x" * 100
    t0 = time.perf_counter()
    for seq in range(1, n + 1):
        out.emit("Engineer", "MESSAGE", {"seq": seq, "t": time.time(), "pad": pad})
    out.close()
    done.wait(30)
    pub.close(linger_ms=0)
    sub.close(linger=0)
    ctx.term()
    return n / (last[0] - t0)


def s_persistence(cx: Ctx, rows: list[Row]) -> None:
    """Outbox -> bus -> subscriber events/s, event log on vs off."""
    on, off = Stat(), Stat()
    rows.append(
        Row("4b", "source events/s, event log on", "events/s", on, "event log off", off, None)
    )
    n = cx.size(100_000, 5_000)
    with tempfile.TemporaryDirectory(prefix="msp-") as tmp:
        root = Path(tmp)
        proxy = Proxy(f"ipc://{root}/in.sock", f"ipc://{root}/out.sock")
        proxy.start()
        try:
            store = Store(f"sqlite:///{root}/db.sqlite", root / "events")
            store.create_schema()
            for rep in range(cx.reps):
                tid = new_task_id()
                store.create_task(tid, "bench", False, {}, utcnow())
                on.samples.append(
                    _run(store, tid, n, proxy.frontend_endpoint, proxy.backend_endpoint)
                )
                off.samples.append(
                    _run(
                        NullStore(),
                        new_task_id(),
                        n,
                        proxy.frontend_endpoint,
                        proxy.backend_endpoint,
                    )
                )
                cx.log(
                    f"  [persistence] rep {rep + 1}: on {on.samples[-1]:,.0f}, "
                    f"off {off.samples[-1]:,.0f} events/s"
                )
            store.close()
        finally:
            proxy.stop()
