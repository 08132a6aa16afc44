"""What every scenario shares: the run context, REST shortcuts, running a client group."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.clients import ClientGroup, errors
from bench.table import Row, Stat

PAYLOAD_BYTES = 256  # synthetic payload size for every streaming scenario


@dataclass
class Ctx:
    quick: bool
    reps: int
    work: Path
    deflate: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    _ids: Any = field(default_factory=itertools.count)

    def size(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full

    def home(self, name: str) -> Path:
        # Short names: the stack's ipc socket paths must stay under ~100 bytes.
        path = self.work / f"{name}{next(self._ids)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def clients(
        self,
        urls: list[str],
        expect: int,
        *,
        latency: bool = False,
        procs: int = 1,
        timeout: float = 60.0,
        after_ready: Callable[[], None] | None = None,
        until_closed: bool = False,
        fmt: str = "json",
        deflate: bool | None = None,
        ready_timeout: float = 30.0,
        lean: bool = False,
        ready_messages: int = 1,
        live_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Connect, wait until all are live, run ``after_ready``, return every result."""
        with ClientGroup(
            urls,
            expect,
            latency=latency,
            procs=procs,
            timeout=timeout,
            deflate=self.deflate if deflate is None else deflate,
            fmt=fmt,
            lean=lean,
            ready_messages=ready_messages,
            live_only=live_only,
            connect_timeout=ready_timeout,
        ) as group:
            group.wait_ready(ready_timeout)
            if after_ready is not None:
                after_ready()
            results = group.results()
        short = 0 if until_closed else sum(1 for r in results if r.get("events", 0) < expect)
        if short:
            self.log(
                f"  warning: {short}/{len(results)} connections got < {expect} events: "
                f"{errors(results)[:2]}"
            )
        return results


def row(rows: list[Row], scenario: str, metric: str, unit: str, **kw: Any) -> Row:
    """Declare a row up front, so it is in the table even if its scenario fails."""
    r = Row(scenario, metric, unit, Stat(), **kw)
    if r.baseline_name and r.baseline is None:
        r.baseline = Stat()
    rows.append(r)
    return r


def create(api: httpx.Client, **body: Any) -> str:
    body.setdefault("requirement", "benchmark task")
    r = api.post("/api/tasks", json=body)
    r.raise_for_status()
    return str(r.json()["id"])


def task(api: httpx.Client, task_id: str) -> dict[str, Any]:
    r = api.get(f"/api/tasks/{task_id}")
    r.raise_for_status()
    return dict(r.json())


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
