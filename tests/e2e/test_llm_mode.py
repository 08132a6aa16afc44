"""Which LLM a task runs on is decided at creation, shown everywhere, and kept to."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from metastream.stack import Stack, free_port
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


def test_an_unreachable_llm_fails_the_task_fast_naming_the_host(stack_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    s = stack_factory(env={"METASTREAM_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, requirement="a snake game")
        assert task["llm"] == "configured"
        started = time.monotonic()
        api.post(f"/api/tasks/{task['id']}/run")
        final = wait_status(api, task["id"], TERMINAL, timeout=30)
        took = time.monotonic() - started
    assert final["status"] == "FAILED", final
    assert f"cannot reach the LLM at http://127.0.0.1:{port}" in final["last_message"], final
    assert took < 10, took  # before MetaGPT loads, let alone retries
    assert "Web UI" in s.log("gateway") and f"LLM: http://127.0.0.1:{port}" in s.log("gateway")


@pytest.mark.metagpt
@pytest.mark.timeout(150)
def test_a_configured_llm_is_used(stack_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The scripted LLM served on its own port stands in for a real OpenAI-compatible one."""
    from runner.scripted_llm import ScriptedLLM

    with ScriptedLLM() as llm:
        s = stack_factory(
            env={
                "METASTREAM_LLM_BASE_URL": llm.base_url,
                "METASTREAM_LLM_MODEL": "scripted-metagpt",
            }
        )
        with httpx.Client(base_url=s.url, timeout=30) as api:
            task = create_task(api, requirement="a todo list")
            assert task["llm"] == "configured"
            api.post(f"/api/tasks/{task['id']}/run")
            final = wait_status(api, task["id"], TERMINAL, timeout=120)
            assert final["status"] == "COMPLETED", final
            events = api.get(f"/api/tasks/{task['id']}/events", params={"limit": 5}).json()
        assert llm.requests > 5, "the task's calls went to the configured LLM"
    start = next(e for e in events["events"] if e["event_type"] == "FLOW_START")["payload"]
    assert start["llm"] == "configured" and start["model"] == "scripted-metagpt"
