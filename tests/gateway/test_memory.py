"""Gateway memory is bounded by bytes, not by counts (issue 21).

A log of 200 x 1 MB events is replayed by 10 WebSocket clients at once and read through the
REST pages; the gateway's RSS must stay under ``RSS_BOUND``. (The 1 GB version of this is the
``replay_1gb`` bench scenario; the test keeps to a size that runs in seconds.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest
import websockets

from metastream.stack import Stack
from tests.helpers import create_task, wait_status

N_EVENTS = 200
PAYLOAD = 1_000_000
CLIENTS = 10
PAGE_EVENTS = 60
RSS_BOUND = 300 << 20  # documented in docs/security.md (memory and disk)
pytestmark = pytest.mark.timeout(400)  # writing the log takes a while on a loaded machine


class PeakRss:
    """The highest RSS a process reaches while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def _replay(url: str) -> tuple[int, int, int | None]:
    """Read the whole stream keeping nothing: (events, last id, close code)."""
    count = last = 0
    async with (
        asyncio.timeout(300),
        websockets.connect(url, max_size=None, ping_interval=None) as ws,
    ):
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "event":
                    count += 1
                    assert msg["data"]["event_id"] == last + 1
                    last = msg["data"]["event_id"]
        except websockets.ConnectionClosed:
            pass
        return count, last, ws.close_code


def _big_log(
    stack_factory: Callable[..., Stack], n: int = N_EVENTS
) -> tuple[Stack, httpx.Client, dict[str, Any]]:
    s = stack_factory()
    api = httpx.Client(base_url=s.url, timeout=60)
    task = create_task(api, synthetic={"events": n, "payload_bytes": PAYLOAD})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"}, timeout=300)
    return s, api, task


def test_ten_clients_replaying_a_large_log_stay_under_the_bound(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s, api, task = _big_log(stack_factory)
    url = f"{s.ws_url}/ws/tasks/{task['id']}?start=false"

    async def scenario() -> list[tuple[int, int, int | None]]:
        return await asyncio.gather(*(_replay(url) for _ in range(CLIENTS)))

    with contextlib.closing(api), PeakRss(s.procs["gateway"].pid) as rss:
        results = asyncio.run(scenario())
    assert results == [(N_EVENTS, N_EVENTS, 1000)] * CLIENTS
    print(f"gateway RSS {rss.start >> 20} MB -> peak {rss.peak >> 20} MB")
    assert rss.peak < RSS_BOUND, f"gateway peak RSS {rss.peak >> 20} MB"


def test_event_pages_are_cut_by_size_and_streamed(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s, api, task = _big_log(stack_factory, PAGE_EVENTS)
    with contextlib.closing(api), PeakRss(s.procs["gateway"].pid) as rss:
        after, seen, pages = 0, 0, 0
        while True:
            with api.stream(
                "GET", f"/api/tasks/{task['id']}/events", params={"after": after, "limit": 10000}
            ) as r:
                assert r.status_code == 200
                assert "content-length" not in r.headers  # streamed, not built in memory
                page = json.loads(r.read())
            pages += 1
            ids = [e["event_id"] for e in page["events"]]
            assert ids == list(range(after + 1, after + 1 + len(ids)))
            seen += len(ids)
            after = page["next_after"]
            if not page["has_more"]:
                break
    assert seen == PAGE_EVENTS and pages >= 5  # 60 MB comes in pages of about 8 MB
    print(f"gateway RSS {rss.start >> 20} MB -> peak {rss.peak >> 20} MB")
    assert rss.peak < RSS_BOUND, f"gateway peak RSS {rss.peak >> 20} MB"
