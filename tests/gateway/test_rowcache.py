"""Task rows shared by a task's connections (gateway.rowcache), over a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.clock import utcnow
from core.status import TaskStatus
from gateway.rowcache import TaskRowCache
from store import Store

pytestmark = pytest.mark.timeout(60)
TID = "00000000-0000-4000-8000-000000000001"


def test_concurrent_askers_share_one_read_and_a_fresh_row_is_reused(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "events")
    store.create_schema()
    store.create_task(TID, "req", False, {}, utcnow())
    now = [100.0]
    cache = TaskRowCache(store, max_age=0.5, clock=lambda: now[0])

    async def main() -> None:
        rows = await asyncio.gather(*(cache.get(TID) for _ in range(1000)))
        assert cache.reads == 1 and all(r is not None and r.status == "PENDING" for r in rows)
        store.transition(TID, TaskStatus.QUEUED)
        now[0] += 0.4
        row = await cache.get(TID)  # young enough: from memory, the old status
        assert cache.reads == 1 and row is not None and row.status == "PENDING"
        now[0] += 0.2
        row = await cache.get(TID)  # too old: read again
        assert cache.reads == 2 and row is not None and row.status == "QUEUED"
        assert await cache.get("00000000-0000-4000-8000-00000000dead") is None

    try:
        asyncio.run(main())
    finally:
        store.close()
