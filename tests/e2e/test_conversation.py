"""Conversations through the whole stack: follow-ups and resumes of real MetaGPT runs, offline."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import psutil
import pytest
import websockets

from metastream.stack import Stack
from tests.helpers import Received, collect, create_task, log_events, poll_for, wait_status

pytestmark = [pytest.mark.metagpt, pytest.mark.timeout(600)]
FIRST = "a calculator with add and subtract"
FOLLOW_UP = "add a high score table"
RUN_S = 240  # a cold MetaGPT import takes a minute on a loaded machine


async def _conversation(url: str, runs: int, got: Received, timeout: float) -> None:
    """One connection with ``?follow=conversation`` until ``runs`` runs ended COMPLETED."""
    async with asyncio.timeout(timeout):
        async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
            async for raw in ws:
                msg = json.loads(raw)
                got.messages.append(msg)
                completed = [s for s in got.of("state") if s["status"] == "COMPLETED"]
                if msg["type"] == "state" and len(completed) >= runs:
                    return


def _in_thread(coro: Any) -> threading.Thread:
    t = threading.Thread(target=asyncio.run, args=(coro,), daemon=True)
    t.start()
    return t


def _unchanged(api: httpx.Client, task_id: str, before: dict[str, Any]) -> None:
    after = api.get(f"/api/tasks/{task_id}").json()
    assert after == before


def test_a_follow_up_continues_the_conversation(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, requirement=FIRST, test_mode=True)
    tid = task["id"]
    live = Received()
    url = f"{stack.ws_url}/ws/tasks/{tid}?follow=conversation"
    listener = _in_thread(_conversation(url, 2, live, timeout=2 * RUN_S + 60))
    done = wait_status(api, tid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=RUN_S)
    assert done["status"] == "COMPLETED", done
    first_last = done["last_event_id"]

    # Refusals change nothing about the task.
    before = api.get(f"/api/tasks/{tid}").json()
    for bad in ({"requirement": ""}, {"requirement": "   "}, {}, {"requirement": 3}):
        r = api.post(f"/api/tasks/{tid}/messages", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = api.post(f"/api/tasks/{tid}/messages", json={"requirement": "x" * 20_001})
    assert r.status_code == 422 and "longer than 20000" in r.text
    r = api.post(f"/api/tasks/{tid}/resume")
    assert r.status_code == 409 and "only a CANCELLED or FAILED task" in r.json()["detail"]
    _unchanged(api, tid, before)
    assert api.post("/api/tasks/nope/messages", json={"requirement": "x"}).status_code == 404

    r = api.post(f"/api/tasks/{tid}/messages", json={"requirement": FOLLOW_UP})
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("QUEUED", "RUNNING")
    assert [run["kind"] for run in r.json()["runs"]] == ["start", "follow_up"]
    busy = api.post(f"/api/tasks/{tid}/messages", json={"requirement": "more"})
    if busy.status_code == 409:  # refused while the follow-up runs (it may already be done)
        assert "a follow-up starts only once the task is COMPLETED" in busy.json()["detail"]
    final = poll_for(
        lambda: (
            (t := api.get(f"/api/tasks/{tid}").json())["status"] == "COMPLETED"
            and len(t["runs"]) == 2
            and t["runs"][1]["status"] == "COMPLETED"
            and t
        ),
        RUN_S,
        interval=0.5,
        what="the follow-up run",
    )
    first, second = final["runs"]
    assert (first["kind"], second["kind"]) == ("start", "follow_up")
    assert first["requirement"] == FIRST and second["requirement"] == FOLLOW_UP
    assert first["first_event_id"] == 1 and first["last_event_id"] == first_last
    assert second["first_event_id"] == first_last + 1
    assert second["last_event_id"] == final["last_event_id"]
    assert all(run["started_at"] and run["ended_at"] for run in (first, second))

    events = log_events(api, tid)
    assert [e["event_id"] for e in events] == list(range(1, final["last_event_id"] + 1))
    marker = events[first_last]
    assert marker["event_type"] == "run_started"
    assert marker["payload"] == {"run": 2, "kind": "follow_up", "requirement": FOLLOW_UP}
    assert events[0]["event_type"] == "run_started" and events[0]["payload"]["run"] == 1
    run2 = events[first_last:]
    actions = {(e["agent_role"], e["payload"].get("action")) for e in run2}
    assert ("Engineer", "WriteCodePlanAndChange") in actions  # incremental mode
    files = {f["path"] for f in api.get(f"/api/tasks/{tid}/files").json()["files"]}
    written1 = {e["payload"]["path"] for e in events[:first_last] if "path" in e["payload"]}
    assert {p for p in written1 if p.endswith(".py")} <= files
    assert any(p.endswith("/add_high_score.py") for p in files), files

    # The client connected since the start saw both runs on its one connection.
    listener.join(timeout=60)
    assert not listener.is_alive()
    assert live.event_ids == list(range(1, final["last_event_id"] + 1))
    statuses = [s["status"] for s in live.of("state")]
    assert statuses.count("COMPLETED") == 2
    assert statuses.index("COMPLETED") < len(statuses) - 1  # run 2's states came after

    # A client resuming inside run 1 gets the rest of run 1 and all of run 2, then 1000.
    got = asyncio.run(collect(stack.ws_url, tid, last_event_id=first_last - 3, timeout=60))
    assert got.event_ids == list(range(first_last - 2, final["last_event_id"] + 1))
    assert got.of("state")[-1]["status"] == "COMPLETED" and got.close_code == 1000


def _cancel_after_architect(api: httpx.Client, tid: str) -> None:
    """Wait until round 3 began (the Architect's round is checkpointed), then cancel."""

    def round3() -> bool:
        events = api.get(f"/api/tasks/{tid}/events").json()["events"]
        return any(e["event_type"] == "ROUND" and e["payload"]["round"] >= 3 for e in events)

    # A cold task process imports MetaGPT first: minutes on a loaded machine.
    poll_for(round3, 2 * RUN_S, interval=0.2, what="round 3")


def _resume_and_check(api: httpx.Client, tid: str, interrupted: dict[str, Any]) -> None:
    r = api.post(f"/api/tasks/{tid}/resume")
    assert r.status_code == 200, r.text
    final = poll_for(
        lambda: (t := api.get(f"/api/tasks/{tid}").json())["status"] == "COMPLETED" and t,
        RUN_S,
        interval=0.5,
        what="the resumed run",
    )
    first, second = final["runs"]
    assert first["status"] == interrupted["status"]
    assert second["kind"] == "resume" and second["status"] == "COMPLETED"
    assert second["first_event_id"] == interrupted["last_event_id"] + 1
    events = log_events(api, tid)
    assert [e["event_id"] for e in events] == list(range(1, final["last_event_id"] + 1))
    resumed = events[interrupted["last_event_id"] :]
    roles = {e["agent_role"] for e in resumed if e["event_type"] == "ACTION_START"}
    assert "ProductManager" not in roles and "Architect" not in roles, roles
    assert "Engineer" in roles
    marker = next(e for e in resumed if e["event_type"] == "RESUMED")
    assert marker["payload"]["after_round"] >= 2
    assert resumed[-1]["event_type"] == "FLOW_END"


def test_a_cancelled_task_resumes_after_its_architect(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, requirement=FIRST, test_mode=True, scripted_fault="slow")
    tid = task["id"]
    r = api.post(f"/api/tasks/{tid}/resume")
    assert r.status_code == 409 and "only a CANCELLED or FAILED task" in r.json()["detail"]
    api.post(f"/api/tasks/{tid}/run").raise_for_status()
    _cancel_after_architect(api, tid)
    r = api.post(f"/api/tasks/{tid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    _resume_and_check(api, tid, r.json())


def test_nothing_to_resume_is_a_409_and_changes_nothing(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 5, "rate": 0})
    tid = task["id"]
    api.post(f"/api/tasks/{tid}/cancel").raise_for_status()
    before = api.get(f"/api/tasks/{tid}").json()
    assert before["status"] == "CANCELLED"
    r = api.post(f"/api/tasks/{tid}/resume")
    assert r.status_code == 409 and r.json()["detail"].startswith("Nothing to resume")
    _unchanged(api, tid, before)
    r = api.post(f"/api/tasks/{tid}/messages", json={"requirement": "more"})
    assert r.status_code == 409 and "Task is CANCELLED" in r.json()["detail"]
    _unchanged(api, tid, before)


def test_a_sigkilled_task_resumes_after_its_architect(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, requirement=FIRST, test_mode=True, scripted_fault="slow")
    tid = task["id"]
    api.post(f"/api/tasks/{tid}/run").raise_for_status()
    _cancel_after_architect(api, tid)
    from store import Store

    store = Store(f"sqlite:///{stack.home / 'data' / 'metastream.db'}")
    try:
        row = store.get_task(tid)
        assert row is not None and row.pid is not None
        psutil.Process(row.pid).kill()  # no chance to flush or serialize anything more
    finally:
        store.close()
    killed = wait_status(api, tid, {"FAILED", "CANCELLED", "COMPLETED"}, timeout=60)
    assert killed["status"] == "FAILED", killed
    _resume_and_check(api, tid, killed)
