"""Real MetaGPT runs against the offline scripted LLM.

Each run happens in a child process (this file doubles as the child: `python <this file> JOB`),
as in production: MetaGPT's import is heavy and its patches are per process.
"""

from __future__ import annotations

import collections
import json
import os
import py_compile
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINE = ["ProductManager", "Architect", "ProjectManager", "Engineer"]


class RecordingEmitter:
    """The callback sink: keeps events and state updates in memory."""

    def __init__(self, cancel_on: list[str] | None = None) -> None:
        self.cancelled = threading.Event()
        self.cancelled_at: float | None = None
        self.events: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        # [agent_role, event_type(, action)]: the event on which to request a cancel.
        self._cancel_on = cancel_on

    def emit(self, agent_role: str, event_type: str, payload: dict[str, Any]) -> int:
        json.dumps(payload)  # payloads must be JSON-able
        with self._lock:
            self.events.append({"role": agent_role, "type": event_type, "payload": payload})
            if self._matches(agent_role, event_type, payload) and not self.cancelled.is_set():
                self.cancelled_at = time.monotonic()
                self.cancelled.set()
            return len(self.events)

    def _matches(self, agent_role: str, event_type: str, payload: dict[str, Any]) -> bool:
        if not self._cancel_on:
            return False
        role, etype, *action = self._cancel_on
        return (role, etype) == (agent_role, event_type) and action in ([], [payload.get("action")])

    def set_state(self, **state: Any) -> None:
        with self._lock:
            self.states.append(state)


def _child(job_path: str) -> None:
    """Run the specs of a job (concurrently, in threads) and write what happened as JSON."""
    job = json.loads(Path(job_path).read_text())
    started = time.monotonic()
    from runner.metagpt_flow import FlowSpec, preimport, run_metagpt

    if job.get("preimport"):
        preimport()
    imported = time.monotonic() - started
    results: list[dict[str, Any]] = [{} for _ in job["runs"]]

    def one(i: int, run: dict[str, Any]) -> None:
        emitter = RecordingEmitter(run.get("cancel_on"))
        t0 = time.monotonic()
        error = None
        try:
            run_metagpt(FlowSpec(**run["spec"]), Path(run["workspace"]), emitter)
        except Exception as exc:  # reported to the parent, which asserts on it
            error = {"type": type(exc).__name__, "message": str(exc)}
        ended = time.monotonic()
        results[i] = {
            "cancel_latency": ended - emitter.cancelled_at if emitter.cancelled_at else None,
            "events": emitter.events,
            "states": emitter.states,
            "error": error,
            "seconds": time.monotonic() - t0,
        }

    if job.get("sequential"):  # a conversation: each run on what the one before left
        for i, r in enumerate(job["runs"]):
            one(i, r)
    threads = (
        []
        if job.get("sequential")
        else [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(job["runs"])]
    )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {
        "runs": results,
        "import_seconds": imported,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(job["out"]).write_text(json.dumps(out))


def _start(tmp: Path, name: str, runs: list[dict[str, Any]], **job: Any) -> tuple[Any, Path]:
    out = tmp / f"{name}.out.json"
    job_file = tmp / f"{name}.job.json"
    job_file.write_text(json.dumps({"runs": runs, "out": str(out), **job}))
    cwd = tmp / f"{name}.cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("METAGPT_PROJECT_ROOT", None)
    proc = subprocess.Popen(
        [sys.executable, __file__, str(job_file)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _finish(proc: Any, out: Path, timeout: float = 100) -> dict[str, Any]:
    _, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(out.read_text())


def _run(tmp: Path, name: str, runs: list[dict[str, Any]], **job: Any) -> dict[str, Any]:
    return _finish(*_start(tmp, name, runs, **job))


def _spec(requirement: str, **kw: Any) -> dict[str, Any]:
    return {"requirement": requirement, "test_mode": True, **kw}


def _check_completed_run(run: dict[str, Any], workspace: Path, scripted: bool = True) -> list[str]:
    """The acceptance checks for one offline run; returns the task list."""
    assert run["error"] is None, run["error"]
    events = run["events"]
    first_seen = list(dict.fromkeys(e["role"] for e in events if e["role"] in PIPELINE))
    assert first_seen == PIPELINE
    files = [e["payload"] for e in events if e["type"] == "FILE_WRITTEN"]
    kinds = collections.Counter(f["kind"] for f in files)
    assert kinds["prd"] >= 1 and kinds["design"] >= 1 and kinds["task_list"] >= 1
    task_doc = next(f for f in files if f["kind"] == "task_list")
    task_list = json.loads((workspace / task_doc["path"]).read_text())["Task list"]
    code = {f["path"].rsplit("/", 1)[-1]: f["path"] for f in files if f["kind"] == "code"}
    assert set(task_list) <= set(code), (task_list, code)
    for rel in code.values():
        path = workspace / rel
        assert path.is_file() and not Path(rel).is_absolute() and ".." not in rel
        py_compile.compile(
            str(path), cfile=str(workspace.parent / f"{workspace.name}.pyc"), doraise=True
        )
    costs = [e["payload"] for e in events if e["type"] == "COST"]
    assert costs and costs[-1]["total_completion_tokens"] > 0
    # MetaGPT prices only the models in its table; the stand-in's own model has no price.
    assert costs[-1]["total_cost"] > 0 or not scripted
    progress = [s["progress"] for s in run["states"] if s.get("progress") is not None]
    assert progress == sorted(progress) and progress[-1] == 1.0
    says_scripted = any("scripted LLM" in (s.get("last_message") or "") for s in run["states"])
    assert says_scripted == scripted
    assert events[-1]["type"] == "FLOW_END" and events[-1]["payload"]["ok"] is True
    return task_list


pytestmark = pytest.mark.metagpt


@pytest.mark.timeout(120)
def test_full_flow_after_preimport(tmp_path):
    ws = tmp_path / "ws"
    result = _run(
        tmp_path,
        "full",
        [{"spec": _spec("Create a 2048 game"), "workspace": str(ws)}],
        preimport=True,
    )
    run = result["runs"][0]
    _check_completed_run(run, ws)
    types = collections.Counter(e["type"] for e in run["events"])
    for t in ("MESSAGE", "ACTION_START", "ACTION_END", "LLM_STREAM", "ROUND", "NODE_FILLED"):
        assert types[t] > 0, t
    # Coalescing: far fewer stream events than the ~48-character chunks the server sends.
    streamed = sum(e["payload"]["chars"] for e in run["events"] if e["type"] == "LLM_STREAM")
    assert types["LLM_STREAM"] < streamed / 48
    # Nothing in the child's working directory; MetaGPT's own log is inside the workspace.
    assert list((tmp_path / "full.cwd").iterdir()) == []
    assert (ws / ".metagpt" / "logs" / "metagpt.log").stat().st_size > 0
    print(
        f"\nimport {result['import_seconds']:.1f}s, flow {run['seconds']:.1f}s, "
        f"peak RSS {result['max_rss_mb']:.0f} MB, events {dict(types)}"
    )


@pytest.mark.timeout(120)
def test_two_concurrent_processes_do_not_interfere(tmp_path):
    ws_a, ws_b = tmp_path / "a", tmp_path / "b"
    a = _start(tmp_path, "a", [{"spec": _spec("Build a todo list CLI"), "workspace": str(ws_a)}])
    b = _start(tmp_path, "b", [{"spec": _spec("Write a snake game"), "workspace": str(ws_b)}])
    run_a, run_b = _finish(*a)["runs"][0], _finish(*b)["runs"][0]
    _check_completed_run(run_a, ws_a)
    _check_completed_run(run_b, ws_b)
    _assert_disjoint(run_a, run_b, ws_a, ws_b)


@pytest.mark.timeout(120)
def test_two_concurrent_runs_in_one_process_do_not_interfere(tmp_path):
    # What a fork server or a threaded task process would do: hooks are per run, not global.
    ws_a, ws_b = tmp_path / "a", tmp_path / "b"
    runs = [
        {"spec": _spec("Build a todo list CLI"), "workspace": str(ws_a)},
        {"spec": _spec("Write a snake game"), "workspace": str(ws_b)},
    ]
    run_a, run_b = _run(tmp_path, "both", runs)["runs"]
    _check_completed_run(run_a, ws_a)
    _check_completed_run(run_b, ws_b)
    _assert_disjoint(run_a, run_b, ws_a, ws_b)


def _assert_disjoint(run_a: dict, run_b: dict, ws_a: Path, ws_b: Path) -> None:
    paths_a = {e["payload"]["path"] for e in run_a["events"] if e["type"] == "FILE_WRITTEN"}
    paths_b = {e["payload"]["path"] for e in run_b["events"] if e["type"] == "FILE_WRITTEN"}
    assert all(p.startswith("build_a_todo_list/") for p in paths_a), paths_a
    assert all(p.startswith("write_a_snake_game/") for p in paths_b), paths_b
    # .metastream: the team saved after each round, for resume (issue 18).
    assert sorted(p.name for p in ws_a.iterdir()) == [
        ".metagpt",
        ".metastream",
        "build_a_todo_list",
    ]
    assert sorted(p.name for p in ws_b.iterdir()) == [
        ".metagpt",
        ".metastream",
        "write_a_snake_game",
    ]
    text_a = json.dumps(run_a["events"])
    assert "snake" not in text_a and str(ws_b) not in text_a
    # The scripted LLM follows each requirement: its files are named after it, not 2048.
    assert "build_a_todo_list/build_a_todo_list/todo_list_cli.py" in paths_a, paths_a
    assert "write_a_snake_game/write_a_snake_game/snake_game.py" in paths_b, paths_b
    assert "2048" not in text_a and "2048" not in json.dumps(run_b["events"])


@pytest.mark.timeout(150)
def test_http500_fails_fast_with_a_clear_error(tmp_path):
    spec = _spec("Create a 2048 game", scripted_fault="http500", fast_fail=True)
    run = _run(tmp_path, "h500", [{"spec": spec, "workspace": str(tmp_path / "ws")}])["runs"][0]
    assert run["error"] is not None
    assert run["error"]["type"] == "FlowError"
    assert "ProductManager failed in WritePRD" in run["error"]["message"]
    assert "500" in run["error"]["message"]
    assert run["seconds"] < 60  # MetaGPT's own retries take ~160 s; generous for a loaded CI
    assert run["events"][-1]["type"] == "ERROR" and run["events"][-1]["payload"]["fatal"]


@pytest.mark.timeout(150)
def test_garbage_answers_fail_fast(tmp_path):
    spec = _spec("Create a 2048 game", scripted_fault="garbage", fast_fail=True)
    run = _run(tmp_path, "garb", [{"spec": spec, "workspace": str(tmp_path / "ws")}])["runs"][0]
    assert run["error"]["type"] == "FlowError" and "WritePRD" in run["error"]["message"]
    assert run["seconds"] < 60  # MetaGPT's own retries take ~160 s; generous for a loaded CI


@pytest.mark.timeout(150)
def test_cancel_stops_between_actions(tmp_path):
    runs = [
        {
            "spec": _spec("Create a 2048 game"),
            "workspace": str(tmp_path / "ws"),
            "cancel_on": ["Architect", "ACTION_END"],
        }
    ]
    run = _run(tmp_path, "cancel", runs)["runs"][0]
    assert run["error"]["type"] == "FlowCancelled"
    roles = {e["role"] for e in run["events"]}
    assert "Engineer" not in roles


@pytest.mark.timeout(150)
def test_cancel_interrupts_a_slow_llm_call(tmp_path):
    # The scripted LLM delays each answer by 2 s; the cancel must not wait for it.
    runs = [
        {
            "spec": _spec("Create a 2048 game", scripted_fault="slow"),
            "workspace": str(tmp_path / "ws"),
            "cancel_on": ["ProductManager", "ACTION_START", "WritePRD"],
        }
    ]
    run = _run(tmp_path, "cancel_slow", runs)["runs"][0]
    assert run["error"]["type"] == "FlowCancelled"
    assert run["cancel_latency"] < 1.0


@pytest.mark.timeout(150)
def test_budget_exhaustion_fails_the_run(tmp_path):
    spec = _spec("Create a 2048 game", investment=0.00001)
    run = _run(tmp_path, "budget", [{"spec": spec, "workspace": str(tmp_path / "ws")}])["runs"][0]
    assert run["error"]["type"] == "BudgetExceeded"
    assert "budget exhausted" in run["error"]["message"]


@pytest.mark.timeout(120)
def test_configured_llm_endpoint_is_used_and_key_stays_secret(tmp_path):
    # The standalone scripted server stands in for a real OpenAI-compatible endpoint.
    server = subprocess.Popen(
        [sys.executable, "-m", "runner.scripted_llm", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        key = "sk-very-secret-0123456789"
        spec = _spec(
            "Create a 2048 game",
            test_mode=False,
            llm_base_url=url,
            llm_api_key=key,
            llm_model="scripted-metagpt",  # the model the stand-in serves (checked at start)
        )
        ws = tmp_path / "ws"
        run = _run(tmp_path, "real", [{"spec": spec, "workspace": str(ws)}])["runs"][0]
    finally:
        server.terminate()
        server.wait(timeout=10)
    _check_completed_run(run, ws, scripted=False)
    start = next(e for e in run["events"] if e["type"] == "FLOW_START")["payload"]
    assert start["llm"] == "configured" and "base_url" not in start
    # Clients see no internal URL and no server path (issue 20).
    assert key not in json.dumps(run) and url not in json.dumps(run["events"])
    assert str(ws) not in json.dumps(run["events"])
    for path in ws.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert key not in path.read_text(errors="replace"), path


if __name__ == "__main__":
    _child(sys.argv[1])
