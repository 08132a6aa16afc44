"""``python -m bench.replay_cpu``: the gateway's own CPU per replayed row, per frame format.

A finished task's log replayed in-process through the gateway's real path (the shared
:class:`gateway.logreader.LogReader`, the connection's catch-up loop
``gateway.stream.TaskStream._catch_up`` and its :class:`gateway.frames.FrameWriter`) into a
sender that discards the frames: no client, no sockets, so the figure does not depend on what
else the (shared) machine runs as much as the full stack's deliveries/s do. It counts the
process's CPU (the log reads run in a worker thread), the median of ``--reps`` replays, each
with a fresh log reader (``cold``: every row read from SQLite) and again over its cache
(``warm``, as a second client of the same task would).

Run it from two trees to compare versions: ``PYTHONPATH=<tree> python -m bench.replay_cpu``
(the log is written with the tree's own task-side encoding, bodies included where it has them).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bus.messages import Event, bus_encoder, event_data_json, utcnow
from core import settings
from gateway.frames import Format
from gateway.logreader import LogReader
from gateway.stream import TaskStream
from gateway.wsprotocol import SEND_TEXTS
from store import Store

TASK = "00000000-0000-4000-8000-000000000001"


class _Sink:
    """A WebSocket whose many-frames extension discards what it is given (counts bytes)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        ext = {"send_texts": self._many, "send_binaries": self._many}
        self.scope: dict[str, Any] = {"extensions": {SEND_TEXTS: ext}}

    async def _many(self, frames: list[bytes]) -> None:
        self.frames += len(frames)
        self.bytes += sum(map(len, frames))


def write_log(store: Store, events: int, payload_bytes: int, bodies: bool = True) -> None:
    """A synthetic task's log as its outbox writes it (bus bodies too, if this tree logs them)."""
    pad = "x" * max(0, payload_bytes - 40)
    with_bodies = bodies and "bodies" in inspect.signature(store.append_events).parameters
    store.open_events(TASK)
    for start in range(1, events + 1, 1000):
        evs = [
            Event(
                event_id=i,
                task_id=TASK,
                timestamp=utcnow(),
                agent_role="Engineer",
                event_type="MESSAGE",
                payload={"seq": i, "t": time.time(), "pad": pad},
            )
            for i in range(start, min(start + 1000, events + 1))
        ]
        rows = [(ev.event_id, event_data_json(ev)) for ev in evs]
        if with_bodies:
            store.append_events(TASK, rows, [bus_encoder.encode(ev) for ev in evs])  # type: ignore[call-arg]
        else:
            store.append_events(TASK, rows)


async def replay_once(store: Store, reader: LogReader, fmt: Format) -> tuple[float, float, int]:
    """One client's whole replay: (CPU seconds, wall seconds, frames sent)."""
    sink = _Sink()
    stream = TaskStream(
        sink,  # type: ignore[arg-type]
        TASK,
        0,
        store=store,
        log=reader,
        hub=None,  # type: ignore[arg-type]
        control=None,  # type: ignore[arg-type]
        cfg=settings.load(),
        fmt=fmt,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    await stream._catch_up(None)
    await stream.out.flush()
    return time.process_time() - cpu, time.perf_counter() - wall, sink.frames


async def measure(store: Store, events: int, reps: int, fmts: list[Format]) -> list[str]:
    lines = ["| format | cold us/row (CPU) | warm us/row (CPU) | cold wall us/row | frames |"]
    lines.append("|---|---|---|---|---|")
    for fmt in fmts:
        cold, warm, wall = [], [], []
        frames = 0
        for _ in range(reps):
            reader = LogReader(store, budget_bytes=256 << 20)  # the whole log stays cached
            c, w, frames = await replay_once(store, reader, fmt)
            cold.append(c / events * 1e6)
            wall.append(w / events * 1e6)
            c, _, _ = await replay_once(store, reader, fmt)
            warm.append(c / events * 1e6)
        lines.append(
            f"| {fmt.value} | {statistics.median(cold):.2f} | {statistics.median(warm):.2f} "
            f"| {statistics.median(wall):.2f} | {frames} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_cpu", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=[f.value for f in Format])
    parser.add_argument("--no-bodies", action="store_true", help="log without bus bodies")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msr-") as work:
        store = Store(f"sqlite:///{work}/db.sqlite", Path(work) / "events")
        store.create_schema()
        try:
            write_log(store, args.events, args.payload_bytes, not args.no_bodies)
            fmts = [Format(f) for f in args.formats]
            print("\n".join(asyncio.run(measure(store, args.events, args.reps, fmts))))
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
