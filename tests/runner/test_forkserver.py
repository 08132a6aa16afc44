"""The warm path with real processes: tasks forked from the zygote through a whole stack."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from metastream.stack import Stack
from store import Store
from tests.helpers import create_task, poll_for, wait_status

FAST = {
    "METASTREAM_HEARTBEAT_INTERVAL": "0.5",
    "METASTREAM_HEARTBEAT_TIMEOUT": "2",
    "METASTREAM_STOP_ASK_TIMEOUT": "1",
    "METASTREAM_STOP_TERM_TIMEOUT": "1",
    "METASTREAM_WARM": "1",
    "METASTREAM_WARM_METAGPT": "1",  # conftest turns it off for every other test stack
}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
READY = re.compile(r"fork server ready \(pid (\d+)")


def zygotes(stack: Stack) -> list[int]:
    """Pids of every zygote that became ready, in order."""
    return [int(m) for m in READY.findall(stack.log("supervisor"))]


def warm_stack(home: Path, **env: str) -> Stack:
    st = Stack(home, env={**FAST, **env}).start()
    try:
        poll_for(lambda: zygotes(st), 90, what="the fork server to be ready")
    except AssertionError:
        st.stop()
        raise
    return st


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = warm_stack(tmp_path_factory.mktemp("warm"))  # MetaGPT pre-imported, as in production
    yield st
    st.stop()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


def run(api: httpx.Client, options: dict[str, object] | None = None, **synthetic: object) -> str:
    task = create_task(api, synthetic=synthetic, **(options or {}))
    assert api.post(f"/api/tasks/{task['id']}/run").status_code == 200
    return str(task["id"])


def pid_of(stack: Stack, task_id: str) -> int:
    store = Store(f"sqlite:///{stack.home / 'data' / 'metastream.db'}")
    try:
        return poll_for(lambda: getattr(store.get_task(task_id), "pid", None), 10, what="a pid")
    finally:
        store.close()


def first_events(api: httpx.Client, task_id: str, n: int) -> None:
    poll_for(lambda: api.get(f"/api/tasks/{task_id}").json()["last_event_id"] >= n, 20)


def test_task_is_forked_into_its_own_session(stack: Stack, api: httpx.Client) -> None:
    tid = run(api, events=40, rate=20)
    pid = pid_of(stack, tid)
    proc = psutil.Process(pid)
    zygote = zygotes(stack)[-1]
    assert pid != zygote and proc.ppid() == zygote  # the warm path, a process of its own
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert Path(proc.cwd()) == stack.home / "tasks" / tid
    final = wait_status(api, tid, TERMINAL)
    assert final["status"] == "COMPLETED" and final["last_event_id"] == 40, final
    assert psutil.pid_exists(zygote)  # used for one task only: the task exited, not the zygote


@pytest.mark.parametrize(
    ("spec", "reason", "code"),
    [
        ({"exit_code": 7}, "exit code 7", 7),
        ({"crash": "segv"}, "killed by SIGSEGV", -signal.SIGSEGV),
        ({"crash": "kill"}, "killed by SIGKILL", -signal.SIGKILL),
    ],
)
def test_crash_reports_the_real_exit(
    stack: Stack, api: httpx.Client, spec: dict[str, object], reason: str, code: int
) -> None:
    # Long enough alive (0.5 s) for its pid to be read before the supervisor clears it.
    tid = run(api, events=50, rate=20, exit_after=10, **spec)
    assert psutil.Process(pid_of(stack, tid)).ppid() == zygotes(stack)[-1]
    final = wait_status(api, tid, TERMINAL)
    assert final["status"] == "FAILED" and reason in final["last_message"], final
    assert final["exit_code"] == code


def test_memory_limit_counts_what_the_fork_owns(stack: Stack, api: httpx.Client) -> None:
    # The pages shared with the zygote (MetaGPT: hundreds of MB) are not the task's own.
    small = {"memory_limit_mb": 150}
    fine = run(api, small, events=20, rate=10)
    assert psutil.Process(pid_of(stack, fine)).ppid() == zygotes(stack)[-1]
    ended = wait_status(api, fine, TERMINAL)
    assert ended["status"] == "COMPLETED", ended
    hog = run(api, small, events=10, rate=10, exit_after=3, crash="oom")
    final = wait_status(api, hog, TERMINAL)
    assert final["status"] == "FAILED" and "memory limit" in final["last_message"], final


def test_cancel_kills_the_forked_tree(stack: Stack, api: httpx.Client) -> None:
    tid = run(api, events=100_000, rate=50, spawn_children=2)
    first_events(api, tid, 2)
    leader = psutil.Process(pid_of(stack, tid))
    assert leader.ppid() == zygotes(stack)[-1]
    kids = poll_for(lambda: (k := leader.children(recursive=True)) and len(k) >= 4 and k, 10)
    r = api.post(f"/api/tasks/{tid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    tree = [leader, *kids]
    poll_for(lambda: not any(p.is_running() for p in tree), 3, what="the whole tree gone")


def test_concurrent_forks_get_their_own_workspace(stack: Stack, api: httpx.Client) -> None:
    tids = [run(api, events=40, rate=20) for _ in range(2)]
    pids = [pid_of(stack, t) for t in tids]
    assert len(set(pids)) == 2
    cwds = [Path(psutil.Process(p).cwd()) for p in pids]
    assert cwds == [stack.home / "tasks" / t for t in tids]
    assert {os.getsid(p) for p in pids} == set(pids)
    for tid in tids:
        assert wait_status(api, tid, TERMINAL)["status"] == "COMPLETED"
    logs = [(stack.home / "logs" / f"task-{t}.log") for t in tids]
    assert all(p.exists() for p in logs)


@pytest.mark.slow
def test_zygote_death_falls_back_cold_and_restarts(tmp_path: Path) -> None:
    st = warm_stack(tmp_path / "home", METASTREAM_WARM_METAGPT="0")
    try:
        with httpx.Client(base_url=st.url, timeout=30) as api:
            # A task forked before the zygote dies still reports its real exit code.
            survivor = run(api, events=30, rate=10, exit_after=25, exit_code=5)
            first_events(api, survivor, 2)
            zygote = zygotes(st)[0]
            assert psutil.Process(pid_of(st, survivor)).ppid() == zygote
            os.kill(zygote, signal.SIGKILL)
            poll_for(lambda: not psutil.pid_exists(zygote), 5)
            cold = run(api, events=20, rate=20)  # long enough to see its pid recorded
            assert psutil.Process(pid_of(st, cold)).ppid() == st.procs["supervisor"].pid
            assert wait_status(api, cold, TERMINAL)["status"] == "COMPLETED"
            final = wait_status(api, survivor, TERMINAL)
            assert final["status"] == "FAILED" and final["exit_code"] == 5, final
            poll_for(lambda: len(zygotes(st)) == 2, 30, what="a restarted fork server")
            warm = run(api, events=40, rate=20)
            assert psutil.Process(pid_of(st, warm)).ppid() == zygotes(st)[1]
            assert wait_status(api, warm, TERMINAL)["status"] == "COMPLETED"
        zygote = zygotes(st)[1]
    finally:
        st.stop()
    assert not psutil.pid_exists(zygote)  # stopping the supervisor stops its zygote
