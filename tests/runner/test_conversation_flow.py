"""Follow-ups (MetaGPT incremental mode) and resumes (a serialized team), offline.

Real MetaGPT 0.8.2 driven by the scripted LLM, in a child process (see test_metagpt_flow).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.metagpt_flow.checkpoint import has_checkpoint
from tests.runner.test_metagpt_flow import _finish, _spec, _start

pytestmark = pytest.mark.metagpt
FIRST = "a calculator with add and subtract"
FOLLOW_UP = "add a high score table"
SLOW = 400  # MetaGPT's import alone takes a minute on a loaded machine


def _run(tmp: Path, name: str, runs: list[dict[str, Any]], **job: Any) -> dict[str, Any]:
    return _finish(*_start(tmp, name, runs, **job), timeout=SLOW)


def _actions(run: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (e["role"], e["payload"]["action"]) for e in run["events"] if e["type"] == "ACTION_START"
    ]


@pytest.mark.timeout(480)
def test_follow_up_runs_incrementally_and_adds_a_module(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    out = _run(
        tmp_path,
        "conv",
        [
            {"spec": _spec(FIRST, project_name="calc"), "workspace": str(ws)},
            {
                "spec": _spec(FOLLOW_UP, project_name="calc", incremental=True),
                "workspace": str(ws),
            },
        ],
        sequential=True,
    )
    first, second = out["runs"]
    # (Its task document is refined in place by the follow-up: read what run 1 reported.)
    assert first["error"] is None, first["error"]
    assert first["events"][-1]["type"] == "FLOW_END"
    task_list = first["events"][-1]["payload"]["files"]
    assert second["error"] is None, second["error"]
    # Incremental mode shows in the actions: the Engineer plans the change first.
    assert ("Engineer", "WriteCodePlanAndChange") in _actions(second)
    assert ("Engineer", "WriteCodePlanAndChange") not in _actions(first)
    start = next(e for e in second["events"] if e["type"] == "FLOW_START")
    assert start["payload"]["incremental"] is True
    src = ws / "calc" / "calc"
    # The first run's files are kept; the follow-up adds a module named after it.
    assert set(task_list) <= {p.name for p in src.iterdir()}
    feature = (src / "add_high_score.py").read_text()
    assert "def add_high_score()" in feature and FOLLOW_UP in feature
    assert "add_high_score()" in (src / "main.py").read_text()
    ran = subprocess.run(
        [sys.executable, "main.py"], cwd=src, capture_output=True, text=True, timeout=30
    )
    assert ran.returncode == 0, ran.stderr
    assert f"Added: {FOLLOW_UP}" in ran.stdout
    end = second["events"][-1]
    assert end["type"] == "FLOW_END" and "add_high_score.py" in end["payload"]["files"]
    assert not has_checkpoint(ws)  # completed: nothing to resume


@pytest.mark.timeout(480)
def test_resume_after_cancel_skips_the_roles_that_finished(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    # Cancelled as the ProjectManager starts: the Architect's round was checkpointed. Both
    # runs in one child (sequentially), as two task processes would run them.
    cancelled, resumed = _run(
        tmp_path,
        "resume",
        [
            {
                "spec": _spec(FIRST, project_name="calc"),
                "workspace": str(ws),
                "cancel_on": ["ProjectManager", "ACTION_START", "WriteTasks"],
            },
            {"spec": _spec(FIRST, project_name="calc", resume=True), "workspace": str(ws)},
        ],
        sequential=True,
    )["runs"]
    assert cancelled["error"]["type"] == "FlowCancelled"
    assert resumed["error"] is None, resumed["error"]
    roles = {role for role, _ in _actions(resumed)}
    assert "ProductManager" not in roles and "Architect" not in roles
    assert {"ProjectManager", "Engineer"} <= roles
    marker = next(e for e in resumed["events"] if e["type"] == "RESUMED")
    assert marker["payload"]["after_round"] == 2
    rounds = [e["payload"]["round"] for e in resumed["events"] if e["type"] == "ROUND"]
    assert rounds[0] == 3
    end = resumed["events"][-1]
    assert end["type"] == "FLOW_END" and end["payload"]["ok"] is True
    src = ws / "calc" / "calc"
    assert set(end["payload"]["files"]) <= {p.name for p in src.iterdir()}
    assert not has_checkpoint(ws)
