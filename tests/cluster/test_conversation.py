"""Conversations across nodes: a follow-up or a resume runs on another node than the run before.

Real MetaGPT runs (offline scripted LLM) on a two-node cluster. The node that ran the task is
then stopped or lost, so the next run can only be claimed by the other node, whose home has no
copy of the workspace: it comes from the shared store (runner/workspace_share.py).
"""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any

import httpx
import psutil
import pytest

from metastream.cluster import Cluster
from metastream.stack import Stack
from store import Store
from tests.helpers import create_task, log_events, poll_for, wait_status

pytestmark = [pytest.mark.cluster, pytest.mark.metagpt, pytest.mark.timeout(900)]
FIRST = "a calculator with add and subtract"
FOLLOW_UP = "add a high score table"
RUN_S = 300  # a cold MetaGPT import takes a minute or more on a loaded machine
TTL, MARGIN = 4.0, 30.0  # tests/cluster/conftest.py FAST; a loaded 2-core machine


def _owner(api: httpx.Client, task_id: str) -> str:
    def node() -> str | None:
        t = api.get(f"/api/tasks/{task_id}").json()
        return t["node"] if t["status"] in ("RUNNING", "COMPLETED") and t["node"] else None

    return poll_for(node, RUN_S, interval=0.2, what=f"task {task_id} on a node")


def _workspace_files(stack: Stack, task_id: str) -> set[str]:
    ws = stack.home / "tasks" / task_id
    return {str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file()}


def _kill_node(stack: Stack) -> None:
    """SIGKILL the node's supervisor and everything under it: nothing is flushed or shared."""
    sup = psutil.Process(stack.procs["supervisor"].pid)
    for p in [sup, *sup.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    stack.stop()  # its gateway too


def _stored_rounds(cluster: Cluster, task_id: str) -> int:
    """Rounds done by the serialized team in the shared store (0: none there)."""
    store = Store(cluster.common["METASTREAM_DB_URL"])
    try:
        assert store.files is not None
        for path, _mtime, data in store.files.read_all(task_id):
            if path == ".metastream/team/run.json":
                return int(json.loads(data)["rounds"])
        return 0
    finally:
        store.close()


def test_a_follow_up_runs_on_another_node_on_the_first_run_s_files(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    with httpx.Client(base_url=a.url, timeout=30) as api:
        tid = create_task(api, requirement=FIRST, test_mode=True)["id"]
        api.post(f"/api/tasks/{tid}/run").raise_for_status()
        done = wait_status(api, tid, {"COMPLETED", "FAILED", "CANCELLED"}, RUN_S)
        assert done["status"] == "COMPLETED", done
        first_last = done["last_event_id"]
        owner = done["node"]
    first = cluster.nodes[owner]
    other_name = "b" if owner == "a" else "a"
    other = cluster.nodes[other_name]
    written = {p for p in _workspace_files(first, tid) if p.endswith(".py")}
    assert written and not (other.home / "tasks" / tid).exists()
    # The supervisor that ran it is gone (its gateway stays): only the other node can run
    # the follow-up.
    first.procs["supervisor"].terminate()
    first.procs["supervisor"].wait(30)

    with httpx.Client(base_url=other.url, timeout=30) as api:
        r = api.post(f"/api/tasks/{tid}/messages", json={"requirement": FOLLOW_UP})
        assert r.status_code == 200, r.text
        final = poll_for(
            lambda: (
                (t := api.get(f"/api/tasks/{tid}").json())["status"] in ("COMPLETED", "FAILED")
                and len(t["runs"]) == 2
                and t["runs"][1]["status"] in ("COMPLETED", "FAILED")
                and t
            ),
            RUN_S,
            interval=0.5,
            what="the follow-up run",
        )
        assert final["status"] == "COMPLETED" and final["node"] == other_name, final
        second = final["runs"][1]
        assert second["kind"] == "follow_up" and second["first_event_id"] == first_last + 1
        events = log_events(api, tid)
        assert [e["event_id"] for e in events] == list(range(1, final["last_event_id"] + 1))
        run2 = events[first_last:]
        assert run2[0]["event_type"] == "run_started"
        actions = {(e["agent_role"], e["payload"].get("action")) for e in run2}
        assert ("Engineer", "WriteCodePlanAndChange") in actions  # incremental mode
        # On the other node's disk: run 1's files, restored, plus the change.
        here = _workspace_files(other, tid)
        assert written <= here, written - here
        assert any(p.endswith("/add_high_score.py") for p in here), here
        assert ".metastream/team/team.json" not in here  # completed: nothing to resume
        listed = {f["path"] for f in api.get(f"/api/tasks/{tid}/files").json()["files"]}
        assert written <= listed and any(p.endswith("/add_high_score.py") for p in listed)
        assert not [p for p in listed if any(part.startswith(".") for part in p.split("/"))]
    # The first node's gateway has run 1's workspace on its disk, which is not current any
    # more: it serves the files from the store.
    with httpx.Client(base_url=first.url, timeout=30) as api_first:
        there = {f["path"] for f in api_first.get(f"/api/tasks/{tid}/files").json()["files"]}
        assert there == listed


def _start_until_round3(cluster: Cluster) -> tuple[str, str]:
    """A slow MetaGPT run started: (task id, owner node) once its round 3 began."""
    with httpx.Client(base_url=cluster.nodes["a"].url, timeout=30) as api:
        tid = create_task(api, requirement=FIRST, test_mode=True, scripted_fault="slow")["id"]
        api.post(f"/api/tasks/{tid}/run").raise_for_status()
        owner = _owner(api, tid)

        def round3() -> bool:
            events = api.get(f"/api/tasks/{tid}/events").json()["events"]
            return any(e["event_type"] == "ROUND" and e["payload"]["round"] >= 3 for e in events)

        poll_for(round3, RUN_S, interval=0.2, what="round 3")
    return tid, owner


def _resume_elsewhere(api: httpx.Client, tid: str, node: str, interrupted: dict[str, Any]) -> None:
    """Resume through ``api``: it runs on ``node``, skips the roles that had finished."""
    r = api.post(f"/api/tasks/{tid}/resume")
    assert r.status_code == 200, r.text
    final: dict[str, Any] = poll_for(
        lambda: (
            (t := api.get(f"/api/tasks/{tid}").json())["status"] in ("COMPLETED", "FAILED")
            and len(t["runs"]) == 2
            and t
        ),
        RUN_S,
        interval=0.5,
        what="the resumed run",
    )
    assert final["status"] == "COMPLETED" and final["node"] == node, final
    first, second = final["runs"]
    assert first["status"] == interrupted["status"] and second["kind"] == "resume"
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
    listed = {f["path"] for f in api.get(f"/api/tasks/{tid}/files").json()["files"]}
    assert any(p.endswith(".py") for p in listed), listed


def test_a_run_lost_with_its_node_resumes_on_another_after_its_architect(
    cluster: Cluster,
) -> None:
    tid, owner = _start_until_round3(cluster)
    # The Architect's round (2) was checkpointed; the owner shares it while round 3 runs.
    poll_for(lambda: _stored_rounds(cluster, tid) >= 2, 30, interval=0.2, what="round 2 shared")
    other_name = "b" if owner == "a" else "a"
    _kill_node(cluster.nodes[owner])
    with httpx.Client(base_url=cluster.nodes[other_name].url, timeout=30) as api:
        lost = wait_status(api, tid, {"FAILED", "COMPLETED", "CANCELLED"}, TTL + MARGIN)
        assert lost["status"] == "FAILED" and lost["last_message"] == f"node {owner} lost", lost
        _resume_elsewhere(api, tid, other_name, lost)


def test_a_run_cancelled_by_its_node_s_shutdown_resumes_on_another(cluster: Cluster) -> None:
    tid, owner = _start_until_round3(cluster)
    other_name = "b" if owner == "a" else "a"
    cluster.nodes[owner].stop()  # a clean stop (maintenance): its tasks end CANCELLED
    with httpx.Client(base_url=cluster.nodes[other_name].url, timeout=30) as api:
        stopped = wait_status(api, tid, {"FAILED", "COMPLETED", "CANCELLED"}, 30)
        assert stopped["status"] == "CANCELLED", stopped
        assert stopped["last_message"].startswith("Supervisor shut down"), stopped
        _resume_elsewhere(api, tid, other_name, stopped)
