"""End to end through real processes: REST -> supervisor -> task process -> bus -> WebSocket."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from metastream.stack import Stack
from tests.helpers import SEED_EVENT_KEYS, SEED_STATE_KEYS, collect, create_task, wait_status


@pytest.fixture
def stack(backend_stack: Stack) -> Stack:
    """This module's stacks: on each store backend (tests/conftest.py)."""
    return backend_stack


def test_task_streams_in_seed_format(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 500, "rate": 2000})
    assert task["status"] == "PENDING" and task["id"] == task["task_id"]

    got = asyncio.run(collect(stack.ws_url, task["id"]))

    first = got.messages[0]
    assert first == {
        "type": "connected",
        "data": {"task_id": task["id"], "message": "Task started and connected to event stream"},
    }
    assert got.event_ids == list(range(1, 501))
    for data in got.of("event"):
        assert set(data) == SEED_EVENT_KEYS and data["task_id"] == task["id"]
        assert data["timestamp"].endswith("Z") and isinstance(data["payload"], dict)
    states = got.of("state")
    assert all(set(s) == SEED_STATE_KEYS for s in states)
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert got.messages[-1]["type"] == "state"
    assert states[-1]["status"] == "COMPLETED" and states[-1]["completed_at"].endswith("Z")
    assert got.close_code == 1000


def test_two_clients_and_a_late_joiner_get_identical_sequences(
    stack: Stack, api: httpx.Client
) -> None:
    task = create_task(api, synthetic={"events": 3000, "rate": 3000})

    async def scenario() -> list[list[int]]:
        first = asyncio.create_task(collect(stack.ws_url, task["id"]))
        second = asyncio.create_task(collect(stack.ws_url, task["id"]))
        # The late joiner connects mid-run and must still start from event 1.
        while api.get(f"/api/tasks/{task['id']}").json()["last_event_id"] < 500:
            await asyncio.sleep(0.05)
        late = await collect(stack.ws_url, task["id"])
        return [(await first).event_ids, (await second).event_ids, late.event_ids]

    a, b, late = asyncio.run(scenario())
    assert a == b == late == list(range(1, 3001))


def test_unknown_task(stack: Stack, api: httpx.Client) -> None:
    got = asyncio.run(collect(stack.ws_url, "00000000-0000-4000-8000-000000000000"))
    assert got.messages == [{"type": "error", "data": {"message": "Task not found"}}]
    assert got.close_code == 4404
    r = api.get("/api/tasks/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Task not found"}
    for path in ("/api/tasks/nope/run", "/api/tasks/nope/cancel"):
        assert api.post(path).status_code == 404
    assert api.get("/api/tasks/nope/events").status_code == 404


def test_invalid_body_is_422(api: httpx.Client) -> None:
    assert api.post("/api/tasks", json={}).status_code == 422
    assert api.post("/api/tasks", json={"requirement": ""}).status_code == 422
    bad = {"requirement": "x", "synthetic": {"events": -1}}
    assert api.post("/api/tasks", json=bad).status_code == 422


def test_crash_fails_only_that_task(stack: Stack, api: httpx.Client) -> None:
    healthy = create_task(api, synthetic={"events": 400, "rate": 400})
    crashing = create_task(api, synthetic={"events": 100, "exit_after": 10, "exit_code": 7})
    assert api.post(f"/api/tasks/{healthy['id']}/run").status_code == 200

    got = asyncio.run(collect(stack.ws_url, crashing["id"]))
    assert got.event_ids == list(range(1, 11))
    final = got.of("state")[-1]
    assert final["status"] == "FAILED" and "exit code 7" in final["last_message"]
    assert got.close_code == 1000

    done = wait_status(api, healthy["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED" and done["last_event_id"] == 400


def test_events_endpoint_pages_the_log(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 250})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    seen: list[int] = []
    after = 0
    while True:
        page = api.get(f"/api/tasks/{task['id']}/events", params={"after": after, "limit": 100})
        body = page.json()
        seen += [e["event_id"] for e in body["events"]]
        after = body["next_after"]
        if not body["has_more"]:
            break
    assert seen == list(range(1, 251))


def test_listing_is_newest_first_and_paginated(api: httpx.Client) -> None:
    ids = [create_task(api, requirement=f"t{i}")["id"] for i in range(5)]
    page = api.get("/api/tasks", params={"limit": 3}).json()
    assert page["total"] == 5 and [t["id"] for t in page["tasks"]] == ids[::-1][:3]
    rest = api.get("/api/tasks", params={"limit": 3, "offset": 3}).json()
    assert [t["id"] for t in rest["tasks"]] == ids[::-1][3:]


def test_start_false_watches_without_starting(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 5})

    async def peek() -> list[dict]:
        import json

        import websockets

        url = f"{stack.ws_url}/ws/tasks/{task['id']}?start=false"
        async with websockets.connect(url, ping_interval=None) as ws:
            return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]

    first, state = asyncio.run(peek())
    assert first["data"]["message"] == "Connected to event stream"
    assert state["data"]["status"] == "PENDING"
    assert api.get(f"/api/tasks/{task['id']}").json()["status"] == "PENDING"


def test_an_ended_task_replays_events_then_its_final_state_last(
    stack: Stack, api: httpx.Client
) -> None:
    # Clients stop reading at a final state: for an ended task it must come after the events.
    task = create_task(api, synthetic={"events": 40, "rate": 0})
    assert api.post(f"/api/tasks/{task['id']}/run").status_code == 200
    wait_status(api, task["id"], {"COMPLETED"})
    got = asyncio.run(collect(stack.ws_url, task["id"]))
    assert [m["type"] for m in got.messages] == ["connected"] + ["event"] * 40 + ["state"]
    assert got.event_ids == list(range(1, 41))
    assert got.of("state")[-1]["status"] == "COMPLETED" and got.close_code == 1000
