"""Soak: thousands of short synthetic tasks, one WebSocket client each; gateway RSS must level off.

    python -m bench.soak [--tasks 3000] [--events 200] [--parallel 4]

Prints the gateway's RSS every ``--every`` tasks and the growth after the first few hundred
(the issue's target: within +30 MB of its value after the first 300 tasks). Every stream is
checked exact (events 1..N, then close 1000). The gateway used to keep ~70 KB per ended task
(its shared log reader's blocks of every task ever streamed); now an ended task's blocks are
dropped when its last client leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import httpx
import psutil
import websockets

from metastream.stack import Stack


async def _one(api: httpx.AsyncClient, ws_url: str, events: int) -> None:
    r = await api.post("/api/tasks", json={"requirement": "soak", "synthetic": {"events": events}})
    r.raise_for_status()
    task_id = r.json()["id"]
    last = 0
    async with websockets.connect(f"{ws_url}/ws/tasks/{task_id}", max_size=None) as ws:
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "event":
                    assert msg["data"]["event_id"] == last + 1, (task_id, last, msg["data"])
                    last += 1
        except websockets.ConnectionClosed:
            pass
    if ws.close_code != 1000 or last != events:
        row = (await api.get(f"/api/tasks/{task_id}")).json()
        raise AssertionError(f"task {task_id}: close {ws.close_code}, {last} of {events}: {row}")


async def soak(
    stack: Stack, tasks: int, events: int, parallel: int, every: int
) -> list[tuple[int, float]]:
    gateway = psutil.Process(stack.procs["gateway"].pid)
    marks = [(0, gateway.memory_info().rss / 2**20)]
    done = 0
    sem = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as api:

        async def run_one() -> None:
            nonlocal done
            async with sem:
                await _one(api, stack.ws_url, events)
            done += 1
            if done % every == 0:
                marks.append((done, gateway.memory_info().rss / 2**20))
                print(f"  {done:>6} tasks  gateway RSS {marks[-1][1]:7.1f} MB", flush=True)

        await asyncio.gather(*(run_one() for _ in range(tasks)))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--every", type=int, default=300)
    args = parser.parse_args()
    env = {
        "METASTREAM_CREATE_RATE": "0",
        "METASTREAM_MAX_RUNNING": str(args.parallel),
        # A loaded machine starts processes slowly; a soak is about memory, not liveness.
        "METASTREAM_HEARTBEAT_TIMEOUT": "30",
    }
    with tempfile.TemporaryDirectory() as home, Stack(Path(home), env=env) as stack:
        marks = asyncio.run(soak(stack, args.tasks, args.events, args.parallel, args.every))
    base = next((rss for n, rss in marks if n >= args.every), marks[0][1])
    print(f"\n| tasks | gateway RSS (MB) | vs after {args.every} |\n|---|---|---|")
    for n, rss in marks:
        print(f"| {n} | {rss:.1f} | {rss - base:+.1f} |")
    growth = marks[-1][1] - base
    print(f"\ngrowth after the first {args.every} tasks: {growth:+.1f} MB (target: within +30 MB)")


if __name__ == "__main__":
    main()
