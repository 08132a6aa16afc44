"""The curves' A/B runs: deflate thresholds, gateway workers, and a finished task's replay."""

from __future__ import annotations

from typing import Any

from bench import procs
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, task, wait_for
from bench.curve_runs import FORMATS
from bench.measure import flat_out, mem, synthetic_stack


def deflate_ab(cx: Ctx, n: int, out: list[dict[str, Any]]) -> None:
    """Clients offering permessage-deflate: compress every message, or only long ones.

    Saturation fan-out of one task to ``n`` clients, per server threshold
    (``METASTREAM_WS_DEFLATE_MIN_BYTES``), with the seed format's ~450-byte event messages
    and with batches (tens of KiB, which compress well).
    """
    for threshold in (0, 1024):
        deflate_env = {"METASTREAM_WS_DEFLATE_MIN_BYTES": str(threshold)}
        with synthetic_stack(cx, "cd", n, **deflate_env) as (st, api):
            gw = st.procs["gateway"].pid
            cases = [("seed JSON", "json", True), ("batched JSON", "batch", True)]
            if threshold:
                cases.append(("seed JSON", "json", False))
            for label, fmt, deflate in cases:
                name = f"{label} {'+ deflate >= ' + str(threshold) + ' B' if deflate else ''}"
                point: dict[str, Any] = {"curve": "deflate", "n": n, "format": name.strip()}
                k = max(200, cx.size(100_000, 4_000) // n)
                try:
                    run = flat_out(
                        cx, st, api, n, k, watch=[gw], procs=min(4, n), timeout=120, fmt=fmt,
                        deflate=deflate,
                    )  # fmt: skip
                    point["saturation_delivered_per_s"] = round(run.per_s)
                    point["cpu_us_gateway"] = round(run.cpu_s / run.delivered * 1e6, 1)
                except (TimeoutError, RuntimeError) as exc:
                    point["error"] = f"{type(exc).__name__}: {exc}"[:200]
                out.append(point)
                cx.log(f"  [curves] {point}")


def replay(cx: Ctx, events: int, out: list[dict[str, Any]]) -> None:
    """A finished task's whole log to one client, per format: delivered events/s."""
    with synthetic_stack(cx, "cr") as (st, api):
        tid = create(api, synthetic={"events": events, "rate": 0, "payload_bytes": B})
        api.post(f"/api/tasks/{tid}/run").raise_for_status()
        wait_for(lambda: task(api, tid)["status"] == "COMPLETED", 300, "the task to end", 0.5)
        gw = st.procs["gateway"].pid
        for label, fmt, deflate in [*FORMATS, ("MessagePack", "msgpack", False)]:
            point: dict[str, Any] = {"curve": "replay", "n": events, "format": label}
            try:
                run = flat_out(
                    cx, st, api, 1, events, task_id=tid, start_after_ready=False, watch=[gw],
                    timeout=120, fmt=fmt, deflate=deflate,
                )  # fmt: skip
                point["saturation_delivered_per_s"] = round(run.per_s)
                point["cpu_us_gateway"] = round(run.cpu_s / events * 1e6, 2)
            except (TimeoutError, RuntimeError) as exc:
                point["error"] = f"{type(exc).__name__}: {exc}"[:200]
            out.append(point)
            cx.log(f"  [curves] {point}")


def workers_ab(cx: Ctx, n: int, out: list[dict[str, Any]]) -> None:
    """One gateway process against two workers on one port: saturation fan-out to ``n``."""
    for workers in (1, 2):
        with synthetic_stack(cx, "cw", n, METASTREAM_GATEWAY_WORKERS=str(workers)) as (st, api):
            for label, fmt in (("seed JSON", "json"), ("batched JSON", "batch")):
                point: dict[str, Any] = {
                    "curve": "workers",
                    "n": n,
                    "format": f"{label}, {workers} gateway process(es)",
                }
                k = max(200, cx.size(100_000, 4_000) // n)
                tree = [p.pid for p in procs.tree(st.procs["gateway"].pid)]
                try:
                    run = flat_out(
                        cx, st, api, n, k, watch=tree, procs=min(4, n), timeout=120, fmt=fmt
                    )
                    point["saturation_delivered_per_s"] = round(run.per_s)
                    point["cpu_us_gateway"] = round(run.cpu_s / run.delivered * 1e6, 1)
                    point["rss_mib"] = round(sum(mem(p)[0] for p in tree), 1)
                except (TimeoutError, RuntimeError) as exc:
                    point["error"] = f"{type(exc).__name__}: {exc}"[:200]
                out.append(point)
                cx.log(f"  [curves] {point}")
