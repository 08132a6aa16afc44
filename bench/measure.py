"""Measuring a stack's processes, and the one flat-out fan-out run the curves and A/Bs share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import psutil

from bench import procs
from bench.clients import throughput
from bench.common import PAYLOAD_BYTES, Ctx, create


@contextlib.contextmanager
def synthetic_stack(
    cx: Ctx, name: str, clients: int = 0, **env: str
) -> Iterator[tuple[Any, httpx.Client]]:
    """A stack for synthetic tasks only, with room for ``clients`` WebSocket clients, and its API.

    No MetaGPT in its fork server (the tasks are synthetic); ``env`` adds to its environment.
    """
    full = {"METASTREAM_WARM_METAGPT": "0"}
    if clients:
        room = str(clients + 10)
        full |= {"METASTREAM_WS_MAX_PER_TASK": room, "METASTREAM_WS_MAX_PER_CLIENT": room}
    with (
        procs.stack(cx.home(name), env=full | env) as st,
        httpx.Client(base_url=st.url, timeout=30) as api,
    ):
        yield st, api


def mem(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of one process."""
    p = psutil.Process(pid)
    return p.memory_info().rss / 2**20, p.num_fds()


def cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (ended ones: 0)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class FlatOut(NamedTuple):
    """What one flat-out run delivered."""

    per_s: float  # deliveries per second, all clients together
    delivered: int
    cpu_s: float  # CPU seconds of the watched processes during the run


def flat_out(
    cx: Ctx,
    st: Any,
    api: httpx.Client,
    clients: int,
    events: int,
    *,
    task_id: str | None = None,
    start_after_ready: bool = True,
    watch: list[int] | None = None,
    **client_kw: Any,
) -> FlatOut:
    """A synthetic task emitting ``events`` flat out, read by ``clients`` clients.

    A new task unless ``task_id`` (e.g. a finished one, to replay). With ``start_after_ready``
    the task starts once every client is connected (else the first connection starts it). The
    CPU of the ``watch`` processes is measured over the run. ``client_kw`` goes to
    :meth:`Ctx.clients` (``fmt``, ``deflate``, ``procs``, ``timeout``, ``ready_timeout``).
    """
    tid = task_id or create(
        api, synthetic={"events": events, "rate": 0, "payload_bytes": PAYLOAD_BYTES}
    )
    url = f"{st.ws_url}/ws/tasks/{tid}" + ("?start=false" if start_after_ready else "")

    def start() -> None:
        api.post(f"/api/tasks/{tid}/run").raise_for_status()

    cpu0 = cpu(watch or [])
    res = cx.clients(
        [url] * clients, events, after_ready=start if start_after_ready else None, **client_kw
    )
    return FlatOut(throughput(res), sum(r["events"] for r in res), cpu(watch or []) - cpu0)
