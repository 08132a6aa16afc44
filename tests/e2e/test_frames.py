"""Opt-in frame formats (batched JSON, MessagePack): the seed's messages, in the seed's order."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from metastream.stack import Stack
from tests.helpers import SUBPROTOCOLS, collect, create_task, log_events, wait_status

OPT_IN = ["batch", "msgpack", "msgpack-batch"]


def assert_seed_order(got_messages: list[dict], first: int, n: int) -> None:
    """``connected`` first, events first..n exactly once and in order, the final state last."""
    assert got_messages[0]["type"] == "connected"
    ids = [m["data"]["event_id"] for m in got_messages if m["type"] == "event"]
    assert ids == list(range(first, n + 1)), (len(ids), ids[:3], ids[-3:])
    assert got_messages[-1]["type"] == "state"
    assert got_messages[-1]["data"]["status"] == "COMPLETED"


@pytest.mark.parametrize("fmt", OPT_IN)
def test_replay_is_the_seed_stream(stack: Stack, api: httpx.Client, fmt: str) -> None:
    task = create_task(api, synthetic={"events": 3000, "payload_bytes": 100})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    seed = asyncio.run(collect(stack.ws_url, task["id"]))
    got = asyncio.run(collect(stack.ws_url, task["id"], fmt=fmt))
    assert got.subprotocol == SUBPROTOCOLS[fmt] and seed.subprotocol is None
    # The same objects in the same order (types, fields, values), not just the same ids.
    assert got.messages == seed.messages
    assert_seed_order(got.messages, 1, 3000)
    assert got.close_code == 1000
    if fmt.endswith("batch"):
        assert got.frames < len(got.messages) / 10, got.frames  # batched: many per frame
    else:
        assert got.frames == len(got.messages)


@pytest.mark.parametrize("fmt", OPT_IN)
def test_resume_with_last_event_id(stack: Stack, api: httpx.Client, fmt: str) -> None:
    task = create_task(api, synthetic={"events": 300})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    got = asyncio.run(collect(stack.ws_url, task["id"], last_event_id=123, fmt=fmt))
    assert_seed_order(got.messages, 124, 300)
    assert got.of("event") == log_events(api, task["id"])[123:]
    beyond = asyncio.run(collect(stack.ws_url, task["id"], last_event_id=300, fmt=fmt))
    assert beyond.event_ids == [] and beyond.close_code == 1000
    assert [m["type"] for m in beyond.messages] == ["connected", "state"]


@pytest.mark.parametrize("fmt", OPT_IN)
@pytest.mark.timeout(120)
def test_live_fast_and_slow_consumers(stack: Stack, api: httpx.Client, fmt: str) -> None:
    n = 20_000
    task = create_task(api, synthetic={"events": n, "rate": 5000, "payload_bytes": 64})

    async def scenario():  # type: ignore[no-untyped-def]
        # Both connect before the task runs (the connection starts it): live from event 1.
        fast = asyncio.create_task(collect(stack.ws_url, task["id"], timeout=100, fmt=fmt))
        slow = asyncio.create_task(
            collect(stack.ws_url, task["id"], timeout=100, delay=0.005, delay_every=200, fmt=fmt)
        )
        return await fast, await slow

    fast, slow = asyncio.run(scenario())
    for got in (fast, slow):
        assert_seed_order(got.messages, 1, n)
        assert got.close_code == 1000
    assert fast.of("event") == slow.of("event") == log_events(api, task["id"])


@pytest.mark.parametrize("fmt", ["batch", "msgpack-batch"])
@pytest.mark.timeout(120)
def test_live_batches_at_low_rate_hold_one_message(
    stack: Stack, api: httpx.Client, fmt: str
) -> None:
    # No timer holds events back: at 20 events/s each one leaves alone, as in the seed format.
    task = create_task(api, synthetic={"events": 30, "rate": 20})
    got = asyncio.run(collect(stack.ws_url, task["id"], fmt=fmt))
    assert_seed_order(got.messages, 1, 30)
    assert got.frames >= 30, got.frames


def test_unknown_subprotocol_gets_the_seed_format(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 20})

    async def scenario() -> tuple[str | None, list[str | bytes]]:
        url = f"{stack.ws_url}/ws/tasks/{task['id']}"
        sub = [websockets.Subprotocol("metastream.batch.v9"), websockets.Subprotocol("graphql")]
        async with websockets.connect(url, subprotocols=sub, ping_interval=None) as ws:
            return ws.subprotocol, [raw async for raw in ws]

    chosen, frames = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert chosen is None
    msgs = [json.loads(f) for f in frames]  # text frames, one message each
    assert all(isinstance(m, dict) for m in msgs)
    assert_seed_order(msgs, 1, 20)


def test_format_query_parameter(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 200})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})

    async def frames(query: str) -> tuple[str | None, list[str | bytes], int | None]:
        url = f"{stack.ws_url}/ws/tasks/{task['id']}?{query}"
        got: list[str | bytes] = []
        async with websockets.connect(url, ping_interval=None) as ws:
            try:
                async for raw in ws:
                    got.append(raw)
            except websockets.ConnectionClosedError:
                pass  # a close code other than 1000: checked below
            return ws.subprotocol, got, ws.close_code

    sub, got, code = asyncio.run(asyncio.wait_for(frames("format=msgpack-batch"), 60))
    assert sub is None and code == 1000  # nothing to name: the client did not offer one
    assert all(isinstance(f, bytes) for f in got) and len(got) < 20

    sub, got, code = asyncio.run(asyncio.wait_for(frames("format=xml"), 60))
    assert code == 4400 and len(got) == 1
    assert "Unknown format 'xml'" in got[0] and '"type":"error"' in str(got[0])
