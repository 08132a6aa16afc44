"""The trust boundary, attacked from inside real task processes (issue 20).

An attacker task runs hostile Python (the ``run_python`` test hook, on only because these
stacks set METASTREAM_TEST_HOOKS=1) after its sandbox is applied, on the cold and the warm
path, with a uid of its own (``uid``) and confined by Landlock alone (``landlock``, forced:
tests run as root). Each attempt is reported in an ATTACK event and checked from outside too;
the victim task running beside it must end exactly as it would have alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from metastream.stack import Stack
from tests.helpers import create_task, log_events, poll_for, wait_status

VICTIM_EVENTS = 150
TOKEN = "attack-suite-token-5e1f"

# Runs inside the attacker task; VICTIM, HOME, PIDS are filled in. Every attempt records
# "ok" or the error it met.
PROBE = """
import json, os, signal, socket
V, H, PIDS = {victim!r}, {home!r}, {pids!r}
res = {{}}

def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as exc:
        res[name] = f"{{type(exc).__name__}}: {{exc.errno}}"

def read(path, n=1):
    with open(path, "rb") as f:
        return f.read(n)

def write(path):
    with open(path, "ab") as f:
        f.write(b"planted")

attempt("list_victim_workspace", lambda: os.listdir(f"{{H}}/tasks/{{V}}"))
attempt("plant_in_victim_workspace", lambda: write(f"{{H}}/tasks/{{V}}/planted.txt"))
attempt("list_workspaces", lambda: os.listdir(f"{{H}}/tasks"))
attempt("read_store", lambda: read(f"{{H}}/data/metastream.db"))
attempt("write_store", lambda: write(f"{{H}}/data/metastream.db"))
attempt("read_victim_log", lambda: read(f"{{H}}/data/events/{{V}}/events.db"))
attempt("write_victim_log", lambda: write(f"{{H}}/data/events/{{V}}/events.db"))
attempt("read_logs", lambda: read(f"{{H}}/logs/gateway.log"))
attempt("read_bus_internals", lambda: os.listdir(f"{{H}}/run"))
for who, pid in PIDS.items():
    attempt(f"environ_{{who}}", lambda: read(f"/proc/{{pid}}/environ", 1 << 16))
    attempt(f"mem_{{who}}", lambda: read(f"/proc/{{pid}}/mem"))
    attempt(f"signal_{{who}}", lambda: os.kill(pid, signal.SIGCONT))
attempt("own_workspace", lambda: write("mine.txt"))
with open("/proc/self/cmdline", "rb") as f:
    cmdline = f.read().decode(errors="replace")
import resource
names = ("NOFILE", "CORE", "AS", "NPROC")
limits = {{n: resource.getrlimit(getattr(resource, "RLIMIT_" + n))[0] for n in names}}
no_new_privs = [l for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0].split()[1]
out.emit("System", "ATTACK", {{"results": res, "warm": "forkserver_zygote" in cmdline,
    "limits": limits, "no_new_privs": no_new_privs, "uid": os.getuid()}})
"""
# What must have succeeded (the probe is not just failing everything).
ALLOWED = {"own_workspace"}


def _sandboxed_stack(stack_factory: Any, mode: str, warm: bool) -> Stack:
    env = {
        "METASTREAM_SANDBOX": mode,
        "METASTREAM_TEST_HOOKS": "1",
        "METASTREAM_WARM": "1" if warm else "0",
        "METASTREAM_API_TOKEN": TOKEN,
    }
    s: Stack = stack_factory(env=env)
    if warm:
        poll_for(lambda: "fork server ready" in s.log("forkserver"), 60, what="the zygote")
    return s


@pytest.fixture(params=["uid-cold", "uid-warm", "landlock-cold", "landlock-warm"])
def attacked(request: pytest.FixtureRequest, stack_factory: Any) -> Iterator[tuple[Stack, str]]:
    mode, path = request.param.split("-")
    yield _sandboxed_stack(stack_factory, mode, path == "warm"), path


def _task_pid(api: httpx.Client, stack: Stack, task_id: str) -> int:
    from store import Store

    db = Store(f"sqlite:///{stack.home / 'data' / 'metastream.db'}")
    try:
        return poll_for(
            lambda: (r := db.get_task(task_id)) is not None and r.pid, 20, what="the pid"
        )
    finally:
        db.close()


def _attack(api: httpx.Client, stack: Stack, code: str, path: str) -> tuple[dict[str, Any], int]:
    """Run ``code`` in a new task on ``path`` (cold/warm); its ATTACK results and its pid."""
    attacker = create_task(api, synthetic={"events": 1, "run_python": code})
    api.post(f"/api/tasks/{attacker['id']}/run").raise_for_status()
    pid = _task_pid(api, stack, attacker["id"])
    final = wait_status(api, attacker["id"], {"COMPLETED", "FAILED", "CANCELLED"})
    assert final["status"] == "COMPLETED", final
    reports = [e for e in log_events(api, attacker["id"]) if e["event_type"] == "ATTACK"]
    assert len(reports) == 1, reports
    payload = reports[0]["payload"]
    assert payload["warm"] == (path == "warm"), "not on the path under test"
    # Property 5: the documented default limits, and no way back to privileges.
    assert payload["no_new_privs"] == "1"
    limits = payload["limits"]
    assert limits["NOFILE"] == 1024 and limits["CORE"] == 0
    assert limits["AS"] == 16_384 * 1024 * 1024
    if payload["uid"] != 0:  # its own uid: the process count is the task's alone
        assert limits["NPROC"] == 512
    return payload["results"], pid


def test_a_task_touches_only_its_own_workspace(attacked: tuple[Stack, str]) -> None:
    stack, path = attacked
    with httpx.Client(
        base_url=stack.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as api:
        victim = create_task(api, synthetic={"events": VICTIM_EVENTS, "rate": 30})
        api.post(f"/api/tasks/{victim['id']}/run").raise_for_status()
        victim_pid = _task_pid(api, stack, victim["id"])
        pids = {
            "gateway": stack.procs["gateway"].pid,
            "supervisor": stack.procs["supervisor"].pid,
            "bus": stack.procs["bus"].pid,
            "victim": victim_pid,
        }
        code = PROBE.format(victim=victim["id"], home=str(stack.home), pids=pids)
        report, _attacker_pid = _attack(api, stack, code, path)

        succeeded = {name for name, result in report.items() if result == "ok"}
        assert succeeded == ALLOWED, json.dumps(report, indent=1)
        # The planted file is not there to be served.
        r = api.get(f"/api/tasks/{victim['id']}/files/planted.txt")
        assert r.status_code == 404
        assert not (stack.home / "tasks" / victim["id"] / "planted.txt").exists()

        # The victim is untouched: every event, in order, and its normal end.
        final = wait_status(api, victim["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert [e["event_id"] for e in log_events(api, victim["id"])] == list(
            range(1, VICTIM_EVENTS + 1)
        )
        assert psutil.pid_exists(pids["supervisor"]) and psutil.pid_exists(pids["gateway"])
    _assert_private(stack.home)


def _assert_private(home: Path) -> None:
    """Nothing under METASTREAM_HOME is open to other users (property 7)."""
    for p in [home, *home.rglob("*")]:
        if p.is_symlink() or p.is_socket():
            continue
        mode = p.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"


def test_the_test_hook_is_refused_unless_switched_on(api: httpx.Client) -> None:
    r = api.post(
        "/api/tasks", json={"requirement": "x", "synthetic": {"events": 1, "run_python": "1"}}
    )
    assert r.status_code == 422
    assert "METASTREAM_TEST_HOOKS" in r.text
