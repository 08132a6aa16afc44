"""Scenarios 4 and 5: task start (create -> first event) and memory of many MetaGPT tasks.

Start latency uses the first event's own ``timestamp`` (written by the task process when it
emits), so how quickly we notice the event does not matter. MetaGPT rows say "n/a" with the
reason when MetaGPT test mode does not run on this checkout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil

from bench import procs
from bench.common import Ctx, create, row, task
from bench.table import Row
from core import settings
from store import Store

MB = 1024 * 1024
REQUIREMENT = "Write a command-line tic-tac-toe game"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}

# A cold interpreter doing what a task process must do before its first event.
COLD_SYNTHETIC = "import runner.task.__main__, runner.task.synthetic"
COLD_METAGPT = (
    "import psutil; from runner.metagpt_flow.flow import preimport; preimport(); "
    "print(psutil.Process().memory_info().rss)"
)


def cold(code: str, timeout: float = 120.0) -> tuple[float, str]:
    """Wall time (ms) of a fresh interpreter running ``code``, and what it printed."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    return (time.perf_counter() - t0) * 1000.0, out.stdout.strip()


def cold_metagpt(cx: Ctx) -> list[tuple[float, int]]:
    """(import ms, RSS bytes) of cold MetaGPT interpreters; measured once per run."""
    if "cold_mg" not in cx.cache:
        samples = []
        for _ in range(cx.size(2, 1)):
            ms, out = cold(COLD_METAGPT)
            samples.append((ms, int(out.splitlines()[-1])))
            cx.log(f"  cold MetaGPT interpreter: {ms:,.0f} ms, RSS {samples[-1][1] / MB:.0f} MB")
        cx.cache["cold_mg"] = samples
    return list(cx.cache["cold_mg"])


def first_event(api: httpx.Client, task_id: str, timeout: float) -> dict[str, Any]:
    """The task's first event (polled from the log), or raise with the task's status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = api.get(f"/api/tasks/{task_id}/events", params={"after": 0, "limit": 1}).json()
        if page["events"]:
            return dict(page["events"][0])
        t = task(api, task_id)
        if t["status"] in TERMINAL:
            raise RuntimeError(f"task ended {t['status']} before any event: {t['last_message']}")
        time.sleep(0.02)
    raise TimeoutError(f"no event within {timeout} s")


def start_ms(api: httpx.Client, body: dict[str, Any], timeout: float) -> tuple[float, str]:
    """REST create + run -> first event's emit time, in ms; also the task id."""
    t0 = time.time()
    tid = create(api, **body)
    api.post(f"/api/tasks/{tid}/run").raise_for_status()
    ev = first_event(api, tid, timeout)
    if ev["event_type"] == "ERROR":
        raise RuntimeError(f"first event is an error: {ev['payload'].get('message', '')[:200]}")
    emitted = dt.datetime.fromisoformat(ev["timestamp"]).timestamp()
    return (emitted - t0) * 1000.0, tid


def s4_start(cx: Ctx, rows: list[Row]) -> None:
    syn = row(
        rows,
        "4",
        "start synthetic: create->1st event",
        "ms",
        baseline_name="cold interpreter, task imports",
    )
    mg = row(
        rows,
        "4",
        "start MetaGPT test-mode: create->1st event",
        "ms",
        baseline_name="cold MetaGPT interpreter",
        target=("abs_max", 200.0),
    )
    with procs.stack(cx.home("s4")) as st, httpx.Client(base_url=st.url, timeout=30) as api:
        start_ms(api, {"synthetic": {"events": 1}}, 30)  # warm-up, not counted
        for rep in range(cx.size(5, 1)):
            v, _ = start_ms(api, {"synthetic": {"events": 1}}, 30)
            b, _ = cold(COLD_SYNTHETIC)
            syn.value.samples.append(v)
            assert syn.baseline is not None and mg.baseline is not None
            syn.baseline.samples.append(b)
            cx.log(f"  [4 start] synthetic rep {rep + 1}: {v:.0f} ms (cold imports {b:.0f} ms)")
        mg.baseline.samples += [ms for ms, _ in cold_metagpt(cx)]
        body = {"requirement": REQUIREMENT, "test_mode": True}
        try:
            if not cx.quick:
                # The first task after start-up may find the warm path still warming: not
                # counted (quick mode skips it, a cold start costs seconds).
                _, tid = start_ms(api, body, 90)
                _cancel(api, [tid])
            for rep in range(cx.reps):
                v, tid = start_ms(api, body, 90)
                _cancel(api, [tid])
                mg.value.samples.append(v)
                cx.log(f"  [4 start] MetaGPT test-mode rep {rep + 1}: {v:,.0f} ms")
        except (RuntimeError, TimeoutError) as exc:
            mg.value.samples.clear()
            mg.note = f"n/a (not available): {exc}"[:300]
            cx.log(f"  [4 start] MetaGPT test mode unavailable: {exc}")


def _cancel(api: httpx.Client, tids: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: api.post(f"/api/tasks/{t}/cancel"), tids))


def _memory(procs_: list[psutil.Process], field: str) -> int:
    total = 0
    for p in procs_:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += getattr(p.memory_full_info(), field)
    return total


def s5_memory(cx: Ctx, rows: list[Row]) -> None:
    n = cx.size(20, 2)
    uss = row(
        rows,
        "5",
        f"{n} MetaGPT tasks: per-task USS",
        "MB",
        baseline_name="cold MetaGPT process RSS",
        target=("max", 0.4),
    )
    pss = row(
        rows, "5", f"{n} MetaGPT tasks: total PSS", "MB", baseline_name=f"{n} x cold MetaGPT RSS"
    )
    cold_rss = [rss / MB for _, rss in cold_metagpt(cx)]
    assert uss.baseline is not None and pss.baseline is not None
    uss.baseline.samples += cold_rss
    pss.baseline.samples += [n * r for r in cold_rss]
    home = cx.home("s5")
    env = {"METASTREAM_MAX_RUNNING": str(n + 2)}
    with procs.stack(home, env=env) as st, httpx.Client(base_url=st.url, timeout=30) as api:
        store = Store(settings.load({"METASTREAM_HOME": str(home)}).db_url)
        tids = [create(api, requirement=REQUIREMENT, test_mode=True) for _ in range(n)]
        try:
            for t in tids:
                api.post(f"/api/tasks/{t}/run").raise_for_status()
            best: tuple[int, list[float], float] = (0, [], 0.0)
            # Cold, 20 MetaGPT imports cost ~20 x 7 CPU-seconds: the deadline allows for that.
            deadline = time.monotonic() + cx.size(150.0, 45.0)
            full = 0
            while time.monotonic() < deadline and full < 2:
                taskrows = [store.get_task(t) for t in tids]
                # Alive = running and past its imports (it emitted): its memory is settled.
                live = [r for r in taskrows if r and r.status == "RUNNING" and r.last_event_id]
                per_task = [_memory(procs.tree(r.pid), "uss") / MB for r in live if r.pid]
                per_task = [u for u in per_task if u > 0]
                every = {p.pid: p for c in st.procs.values() for p in procs.tree(c.pid)}
                total = _memory(list(every.values()), "pss") / MB
                if len(per_task) >= best[0]:
                    best = (len(per_task), per_task, total)
                full += len(per_task) == n
                ended = sum(1 for r in taskrows if r and r.status in TERMINAL)
                cx.log(
                    f"  [5 memory] alive {len(per_task)}/{n}, ended {ended}, "
                    f"total PSS {total:,.0f} MB"
                )
                if ended == n:
                    break
                time.sleep(0.5)
            failed = [r for r in (store.get_task(t) for t in tids) if r and r.status == "FAILED"]
            if best[0] == 0:
                why = failed[0].last_message if failed else "no task reached its first event"
                raise RuntimeError(f"n/a (not available): {why}")
            uss.value.samples += best[1]
            pss.value.samples.append(best[2])
            uss.note = (
                f"{best[0]}/{n} tasks alive at the best sample; value range = spread over "
                f"tasks; median {statistics.median(best[1]):.0f} MB"
            )
        finally:
            _cancel(api, tids)
            store.close()
