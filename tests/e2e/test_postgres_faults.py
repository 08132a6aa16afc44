"""PostgreSQL stopped at once and started again mid-stream: nothing a client saw is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from metastream.stack import Stack
from tests.helpers import create_task, follow, log_events, poll_for, wait_status
from tests.pgserver import PASSWORD, PgServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def test_a_server_restart_mid_stream_loses_nothing(
    pg_server: PgServer, stack_factory: Callable[..., Stack]
) -> None:
    stack = stack_factory({"METASTREAM_DB_URL": pg_server.create_database()})
    n = 8000
    with httpx.Client(base_url=stack.url, timeout=60) as api:
        task = create_task(api, synthetic={"events": n, "rate": 1000})
        api.post(f"/api/tasks/{task['id']}/run")
        poll_for(
            lambda: api.get(f"/api/tasks/{task['id']}").json()["last_event_id"] > 1500,
            30,
            what="task under way",
        )
        seen: list[int] = []

        async def scenario():  # type: ignore[no-untyped-def]
            watcher = asyncio.create_task(
                follow(stack.ws_url, task["id"], timeout=120, on_events=seen.append)
            )
            await asyncio.to_thread(poll_for, lambda: len(seen) > 100, 20, 0.05, "live events")
            await asyncio.to_thread(pg_server.stop, "immediate")
            down_at = len(seen)
            await asyncio.sleep(2.0)  # the outage itself (not a synchronisation)
            await asyncio.to_thread(pg_server.start)
            got = await watcher
            return got, down_at

        got, down_at = asyncio.run(scenario())
        final = wait_status(api, task["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
        logged = log_events(api, task["id"])
    ids = [e["event_id"] for e in logged]
    # The log: no gap, no duplicate; everything any client received is in it, as received.
    assert ids == list(range(1, len(ids) + 1))
    assert got.of("event") == logged[: len(got.event_ids)]
    assert got.event_ids == ids
    print(f"status {final['status']}, {len(ids)} events, {down_at} seen when the server stopped")
    if final["status"] == "COMPLETED":
        assert len(ids) == n  # it went on once the server was back
    else:
        assert final["status"] == "FAILED" and final["last_message"], final
    assert got.of("state")[-1]["status"] == final["status"]
    for name in ("supervisor", "gateway"):
        assert "Traceback" not in stack.log(name), stack.log(name)[-3000:]
    # The outage was real: the task's writer waited for the server (and said so, no password).
    logs = "".join(p.read_text(errors="replace") for p in (stack.home / "logs").glob("*.log"))
    assert "unreachable, retrying" in logs
    assert PASSWORD not in logs
