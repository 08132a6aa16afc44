"""The real MetaGPT flow through the whole stack, offline (scripted LLM)."""

from __future__ import annotations

import asyncio
import py_compile
from pathlib import Path

import httpx
import pytest

from metastream.stack import Stack
from tests.helpers import collect, create_task, log_events

pytestmark = [pytest.mark.metagpt, pytest.mark.timeout(180)]
ROLES = ["ProductManager", "Architect", "ProjectManager", "Engineer"]


def test_test_mode_task_runs_the_software_company(
    stack: Stack, api: httpx.Client, tmp_path: Path
) -> None:
    task = create_task(api, requirement="Write a command-line 2048 game", test_mode=True)
    got = asyncio.run(collect(stack.ws_url, task["id"], timeout=150))

    events = got.of("event")
    assert got.event_ids == list(range(1, len(events) + 1))
    first_seen = list(dict.fromkeys(e["agent_role"] for e in events if e["agent_role"] in ROLES))
    assert first_seen == ROLES
    kinds = {e["event_type"] for e in events}
    assert {"MESSAGE", "ACTION_START", "ACTION_END", "COST", "FILE_WRITTEN"} <= kinds
    written = [e["payload"]["path"] for e in events if e["event_type"] == "FILE_WRITTEN"]
    assert any("prd" in p.lower() for p in written)
    assert any("system_design" in p.lower() or "design" in p.lower() for p in written)
    assert any("task" in p.lower() for p in written)
    code = [p for p in written if p.endswith(".py")]
    assert code, written

    states = got.of("state")
    assert states[-1]["status"] == "COMPLETED" and states[-1]["progress"] == 1.0
    assert got.close_code == 1000
    assert events == log_events(api, task["id"])

    files = api.get(f"/api/tasks/{task['id']}/files").json()["files"]
    served = {f["path"] for f in files}
    for path in code:
        assert path in served, (path, served)
        body = api.get(f"/api/tasks/{task['id']}/files/{path}")
        assert body.status_code == 200
        target = tmp_path / "compile" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body.text)
        py_compile.compile(str(target), doraise=True)


def test_failing_llm_fails_the_task_quickly(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, requirement="a todo app", test_mode=True, scripted_fault="http500")
    got = asyncio.run(collect(stack.ws_url, task["id"], timeout=90))
    final = got.of("state")[-1]
    assert final["status"] == "FAILED"
    assert "500" in final["last_message"], final["last_message"]
    assert any(e["event_type"] == "ERROR" for e in got.of("event"))


def test_a_cold_started_task_completes_and_exits_promptly(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """A fresh interpreter that imported MetaGPT used to take >5 s to exit, heartbeats already
    stopped: the supervisor killed the finished task as unresponsive (FAILED)."""
    import datetime as dt

    from tests.helpers import wait_status

    s = stack_factory(env={"METASTREAM_WARM": "0"})  # the default heartbeat timeout, 5 s
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, requirement="a snake game", test_mode=True)
        api.post(f"/api/tasks/{task['id']}/run")
        final = wait_status(api, task["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=150)
        assert final["status"] == "COMPLETED", final["last_message"]
        last = log_events(api, task["id"])[-1]

    def ts(value: str) -> float:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    exit_s = ts(final["completed_at"]) - ts(last["timestamp"])
    print(f"cold task: recorded {exit_s:.2f} s after its last event")
    assert exit_s < 2.5, exit_s
