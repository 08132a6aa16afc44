"""Workspaces across nodes (issue 18): what sharing a checkpoint costs, and a restore.

The supervisor copies a running task's workspace into PostgreSQL after each completed round
(runner/workspace_share.py), sending only what changed. Baseline: the whole workspace read
and rewritten each round (what a run-end-only copy does, repeated). The workspace is shaped
like a MetaGPT test-mode run's (36 files, 76 KB: the serialized team is most of it), then the
same with 500 more files of 10 KB (a larger project). A round rewrites the serialized team
(it grows) and adds one source file.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from bench.common import Ctx, row
from bench.postgres import _server
from bench.table import Row
from runner.workspace_share import collect, restore
from store import Store
from store.files import TaskFiles

META = {"run_no": 1, "node": "bench", "final": False, "taken_at": "2026-01-01T00:00:00Z"}
TEAM = ".metastream/team/team.json"
RUN = ".metastream/team/run.json"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _metagpt_like(ws: Path) -> None:
    """36 files, about 76 KB, as a MetaGPT test-mode run leaves after its Architect."""
    _write(ws / TEAM, os.urandom(20_000).hex().encode())  # 40 KB
    _write(ws / RUN, b"r" * 8_000)
    for i in range(14):
        _write(ws / f"calc/.git/hooks/h{i}.sample", b"#" * 1500)
    for i in range(10):
        _write(ws / f"calc/docs/d{i}.json", b"{}" * 300)
    for i in range(10):
        _write(ws / f"calc/.git/objects/{i:02d}/obj", os.urandom(100))


def _round(ws: Path, n: int) -> None:
    team = (ws / TEAM).read_bytes()
    _write(ws / f"calc/calc/mod{n}.py", b"x = 1\n" * 80)
    _write(ws / TEAM, team + b"m" * 2000)
    time.sleep(0.002)  # run.json after team.json, as the task writes them
    _write(ws / RUN, b"r" * 8_000 + str(n).encode())


def _measure(files: TaskFiles, ws: Path, rounds: int) -> tuple[list[float], list[float]]:
    """(incremental, whole) milliseconds per round: collect + write."""
    inc, whole = [], []
    base = collect(ws, {}).now
    files.share("t1", 0, collect(ws, {}).put, [], META)
    for n in range(rounds):
        _round(ws, n)
        t0 = time.perf_counter()
        got = collect(ws, base)
        files.share("t1", 0, got.put, got.drop, META)
        inc.append((time.perf_counter() - t0) * 1000)
        base = got.now
        t0 = time.perf_counter()
        everything = collect(ws, {})
        files.replace("t2", everything.put)
        whole.append((time.perf_counter() - t0) * 1000)
    return inc, whole


def s_share(cx: Ctx, rows: list[Row]) -> None:
    """Checkpoint share per round vs the whole workspace each round; a restore."""
    small = row(
        rows, "ws", "checkpoint share per round, MetaGPT-sized workspace (36 files, 76 KB)",
        "ms", baseline_name="whole workspace each round",
        note="the serialized team, rewritten each round, is most of it: about even",
    )  # fmt: skip
    large = row(
        rows, "ws", "checkpoint share per round, +500 files of 10 KB", "ms",
        baseline_name="whole workspace each round", target=("max", 0.5),
    )  # fmt: skip
    back = row(rows, "ws", "restore on another node, MetaGPT-sized workspace", "ms")
    rounds = cx.size(10, 3)
    with _server() as server:
        store = Store(server.create_database())
        try:
            store.create_schema()
            for tid in ("t1", "t2"):
                store.create_task(tid, "bench", True, {}, META["taken_at"])
            files = store.files
            assert files is not None
            for rep in range(cx.reps):
                ws = cx.work / f"ws-share-{rep}"
                shutil.rmtree(ws, ignore_errors=True)
                _metagpt_like(ws)
                inc, whole = _measure(files, ws, rounds)
                small.add(_median(inc), _median(whole))
                t0 = time.perf_counter()
                restore(cx.work / f"ws-restored-{rep}", files.read_all("t1"))
                back.add((time.perf_counter() - t0) * 1000)
                for i in range(500):
                    _write(ws / f"calc/big/f{i}.txt", os.urandom(10_000))
                inc, whole = _measure(files, ws, rounds)
                large.add(_median(inc), _median(whole))
        finally:
            store.close()


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]
