"""Which LLM a task runs on is decided at creation, shown everywhere, and kept to."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from metastream.stack import Stack
from tests.helpers import create_task, wait_status

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def test_tasks_are_tagged_with_their_llm(stack_factory) -> None:  # type: ignore[no-untyped-def]
    offline = stack_factory(env={"METASTREAM_LLM_BASE_URL": ""}, name="offline")
    with httpx.Client(base_url=offline.url, timeout=30) as api:
        tested = create_task(api, requirement="a snake game", test_mode=True)
        untested = create_task(api, requirement="a snake game")  # no LLM configured here
        synthetic = create_task(api, synthetic={"events": 1})
        assert (tested["llm"], untested["llm"], synthetic["llm"]) == (
            "scripted",
            "scripted",
            "synthetic",
        )
        listed = {t["id"]: t["llm"] for t in api.get("/api/tasks").json()["tasks"]}
        assert listed[untested["id"]] == "scripted"
        assert api.get(f"/api/tasks/{untested['id']}").json()["llm"] == "scripted"

    # Nothing listens on port 9: only the tag is checked here, no task is started.
    real = stack_factory(env={"METASTREAM_LLM_BASE_URL": "http://127.0.0.1:9/v1"}, name="real")
    with httpx.Client(base_url=real.url, timeout=30) as api:
        assert create_task(api, requirement="a snake game")["llm"] == "configured"
        assert create_task(api, requirement="a snake game", test_mode=True)["llm"] == "scripted"


def test_pace_is_validated(api: httpx.Client) -> None:
    r = api.post("/api/tasks", json={"requirement": "x", "pace": "ludicrous"})
    assert r.status_code == 422 and "pace" in r.text


@pytest.mark.metagpt
@pytest.mark.timeout(120)
def test_untagged_task_runs_on_the_scripted_llm_at_demo_pace(stack: Stack, api: httpx.Client):
    """No test mode ticked and no LLM configured: scripted, said so, and watchable."""
    task = create_task(api, requirement="a snake game", pace="demo")
    assert task["llm"] == "scripted" and task["test_mode"] is False

    async def watch() -> tuple[dict, list[tuple[float, int]]]:
        url = f"{stack.ws_url}/ws/tasks/{task['id']}"
        start: dict = {}
        streamed: list[tuple[float, int]] = []
        async with asyncio.timeout(90), websockets.connect(url) as ws:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] != "event":
                    continue
                data = msg["data"]
                if data["event_type"] == "FLOW_START":
                    start = data["payload"]
                elif data["event_type"] == "LLM_STREAM":
                    streamed.append((time.monotonic(), data["payload"]["chars"]))
                    if streamed[-1][0] - streamed[0][0] >= 3:
                        return start, streamed
        raise AssertionError("the stream ended before 3 s of LLM text")

    start, streamed = asyncio.run(watch())
    api.post(f"/api/tasks/{task['id']}/cancel")
    assert start["llm"] == "scripted" and start["pace"] == "demo", start
    # Human-readable: about 100 characters a second (fast pace: thousands).
    span = streamed[-1][0] - streamed[0][0]
    rate = sum(chars for _, chars in streamed[1:]) / span
    print(f"demo pace: {rate:.0f} characters/s over {span:.1f} s")
    assert 30 < rate < 200, rate
    final = wait_status(api, task["id"], TERMINAL)
    assert final["status"] == "CANCELLED"
