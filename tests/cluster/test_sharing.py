"""Several nodes share the work: claims, node names, node and run_count in REST."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import zipfile

import httpx
import pytest

from metastream.cluster import Cluster
from tests.helpers import collect, create_task, log_events, poll_for, wait_status

pytestmark = pytest.mark.cluster


def test_eight_tasks_on_two_nodes_each_run_once_and_complete(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    with (
        httpx.Client(base_url=a.url, timeout=30) as api_a,
        httpx.Client(base_url=b.url, timeout=30) as api_b,
    ):
        ids = []
        for i in range(8):
            api = api_a if i % 2 == 0 else api_b
            t = create_task(api, synthetic={"events": 40, "rate": 40})
            assert api.post(f"/api/tasks/{t['id']}/run").status_code == 200
            ids.append(t["id"])
        ends = [wait_status(api_a, tid, {"COMPLETED", "FAILED", "CANCELLED"}, 120) for tid in ids]
        assert [t["status"] for t in ends] == ["COMPLETED"] * 8, ends
        assert all(t["run_count"] == 1 for t in ends), ends
        assert {t["node"] for t in ends} == {"a", "b"}, ends
        for tid in ids:
            assert [e["event_id"] for e in log_events(api_b, tid)] == list(range(1, 41))
        nodes = api_b.get("/api/nodes").json()["nodes"]
        assert [(n["name"], n["state"], n["capacity"]) for n in nodes] == [
            ("a", "up", 2),
            ("b", "up", 2),
        ]


def test_a_second_live_supervisor_with_the_same_node_name_is_refused(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    dup_env = {**a.env, "METASTREAM_HOME": str(cluster.root / "dup"), "METASTREAM_CONTROL": ""}
    (cluster.root / "dup").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "runner"], env=dup_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "node name 'a' is in use by a live supervisor" in done.stderr


def test_a_task_streams_through_the_other_nodes_gateway_and_resumes_through_its_own(
    cluster: Cluster,
) -> None:
    """Gateway X serves a task that node Y runs (X's home has none of Y's files)."""
    with httpx.Client(base_url=cluster.nodes["a"].url, timeout=30) as api:
        hook = "open('report.txt', 'w').write('written on the owner node')"
        t = create_task(api, synthetic={"events": 120, "rate": 60, "run_python": hook})
        api.post(f"/api/tasks/{t['id']}/run")
        owner = poll_for(lambda: api.get(f"/api/tasks/{t['id']}").json()["node"], 30)
        other = cluster.nodes["b" if owner == "a" else "a"]
        got = asyncio.run(collect(other.ws_url, t["id"], last_event_id=0, timeout=60))
        assert got.event_ids == list(range(1, 121))
        assert got.of("state")[-1]["status"] == "COMPLETED" and got.close_code == 1000
        later = asyncio.run(
            collect(cluster.nodes[owner].ws_url, t["id"], last_event_id=70, timeout=60)
        )
        assert later.event_ids == list(range(71, 121))
        row = api.get(f"/api/tasks/{t['id']}").json()
        assert row["node"] == owner and row["run_count"] == 1
        # Its files through the other gateway, whose home has no copy of the workspace.
        assert not (other.home / "tasks" / t["id"]).exists()
        with httpx.Client(base_url=other.url, timeout=30) as api_other:
            listed = api_other.get(f"/api/tasks/{t['id']}/files").json()["files"]
            assert listed == [{"path": "report.txt", "size": 25}], listed
            body = api_other.get(f"/api/tasks/{t['id']}/files/report.txt")
            assert body.status_code == 200 and body.text == "written on the owner node"
            assert api_other.get(f"/api/tasks/{t['id']}/files/nope.txt").status_code == 404
            archive = api_other.get(f"/api/tasks/{t['id']}/archive")
            with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
                assert zf.namelist() == ["report.txt"]
                assert zf.read("report.txt") == b"written on the owner node"
