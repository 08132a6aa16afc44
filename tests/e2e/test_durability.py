"""Never lose an event: slow joiners, slow consumers, resume, and component restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from metastream.stack import Stack
from store import Store
from tests.helpers import (
    SUBPROTOCOLS,
    WORKERS,
    collect,
    create_task,
    follow,
    log_events,
    poll_for,
    wait_status,
)

# Several gateway workers on one port must behave as one gateway.
pytestmark = WORKERS


@pytest.fixture
def stack(backend_stack: Stack) -> Stack:
    """This module's stacks: on each store backend (tests/conftest.py)."""
    return backend_stack


async def until(fn: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll ``fn`` on the loop (the client runs on it) until truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def assert_exactly(ids: list[int], n: int, who: str = "client") -> None:
    assert len(ids) == n and ids == list(range(1, n + 1)), (
        f"{who}: {len(ids)} ids, first bad at "
        f"{next((i for i, v in enumerate(ids, 1) if v != i), None)}"
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_100k_events_three_clients(stack: Stack, api: httpx.Client) -> None:
    n = 100_000
    task = create_task(api, synthetic={"events": n, "payload_bytes": 64})
    finished: dict[str, float] = {}

    async def timed(name: str, coro):  # type: ignore[no-untyped-def]
        got = await coro
        finished[name] = time.monotonic()
        return got

    async def scenario():  # type: ignore[no-untyped-def]
        fast = asyncio.create_task(timed("fast", collect(stack.ws_url, task["id"], timeout=200)))
        # The slow reader pauses on every message: it falls far behind the live stream.
        slow = asyncio.create_task(
            timed(
                "slow", collect(stack.ws_url, task["id"], timeout=200, delay=0.005, delay_every=25)
            )
        )
        resumer = asyncio.create_task(
            timed("resumer", follow(stack.ws_url, task["id"], timeout=200, drop_every=17_000))
        )
        return await fast, await slow, await resumer

    start = time.monotonic()
    fast, slow, resumer = asyncio.run(scenario())
    for name, got in (("fast", fast), ("slow", slow), ("resumer", resumer)):
        assert_exactly(got.event_ids, n, f"{name} (closed {got.close_code})")
        assert got.of("state")[-1]["status"] == "COMPLETED"
    # The resumer really did reconnect several times.
    assert sum(1 for m in resumer.messages if m["type"] == "connected") >= 5
    # The fast client was not held back by the slow one (whose own pauses alone add up to
    # 20 s): a generous bound; bench/ has the figures.
    fast_s, slow_s = finished["fast"] - start, finished["slow"] - start
    print(f"fast client {fast_s:.1f} s, slow client {slow_s:.1f} s for {n} events")
    assert fast_s < slow_s * 0.8
    persisted = log_events(api, task["id"])
    assert persisted == fast.of("event") == slow.of("event") == resumer.of("event")


def test_early_events_before_any_subscriber(stack: Stack, api: httpx.Client) -> None:
    # Run without any client: everything is emitted before a subscriber exists.
    task = create_task(api, synthetic={"events": 50})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    got = asyncio.run(collect(stack.ws_url, task["id"]))
    assert_exactly(got.event_ids, 50)
    assert got.close_code == 1000

    # Auto-start by connecting: the task's first events race its PUB socket's connection.
    quick = create_task(api, synthetic={"events": 5})
    got = asyncio.run(collect(stack.ws_url, quick["id"]))
    assert_exactly(got.event_ids, 5)
    assert got.of("event") == log_events(api, quick["id"])


def test_resume_from_last_event_id(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 300})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    got = asyncio.run(collect(stack.ws_url, task["id"], last_event_id=123))
    assert got.event_ids == list(range(124, 301))
    assert got.of("state")[-1]["status"] == "COMPLETED"
    beyond = asyncio.run(collect(stack.ws_url, task["id"], last_event_id=300))
    assert beyond.event_ids == [] and beyond.close_code == 1000


@pytest.mark.parametrize(
    "component,fmt",
    [("gateway", "json"), ("bus", "json"), ("gateway", "batch"), ("gateway", "msgpack-batch")],
)
@pytest.mark.timeout(120)
def test_component_killed_mid_stream(
    stack: Stack, api: httpx.Client, component: str, fmt: str
) -> None:
    n = 6000
    task = create_task(api, synthetic={"events": n, "rate": 1000})
    api.post(f"/api/tasks/{task['id']}/run")
    poll_for(
        lambda: api.get(f"/api/tasks/{task['id']}").json()["last_event_id"] > 1500,
        20,
        what="task under way",
    )

    url = stack.env.get("METASTREAM_DB_URL") or f"sqlite:///{stack.home / 'data' / 'metastream.db'}"
    store = Store(url, stack.home / "data" / "events")
    received: list[int] = []

    async def scenario():  # type: ignore[no-untyped-def]
        watcher = asyncio.create_task(
            follow(stack.ws_url, task["id"], timeout=90, on_events=received.append, fmt=fmt)
        )
        # The client has live events before the component goes down...
        await until(lambda: len(received) >= 100, "live events")
        stack.kill(component)
        # ...and events keep being logged while it is down (read from the log itself: the
        # gateway may be the one that is down).
        down_at = store.last_event_id(task["id"])
        await until(lambda: store.last_event_id(task["id"]) >= down_at + 300, "events logged")
        stack.start_component(component)
        return await watcher

    try:
        got = asyncio.run(scenario())
    finally:
        store.close()
    assert got.subprotocol == SUBPROTOCOLS[fmt]
    assert_exactly(got.event_ids, n)
    final = wait_status(api, task["id"], {"COMPLETED", "FAILED", "CANCELLED"})
    assert final["status"] == "COMPLETED", final  # the row says why (last_message, error)
    assert got.of("state")[-1]["status"] == "COMPLETED"
    assert got.of("event") == log_events(api, task["id"])
