"""The three launchers against real (misbehaving) processes, each stopped by the one sequence."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from runner import process, stopping
from runner.forkserver import ForkServer
from runner.launchers import (
    AdoptingLauncher,
    ColdLauncher,
    Launcher,
    LaunchUnavailable,
    TaskLaunch,
    WarmLauncher,
    launch_first,
)
from runner.outcome import outcome
from tests.helpers import poll_for

# Deaf to SIGINT and SIGTERM; one grandchild stays in its group, another leaves it (setsid).
STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    kid = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", kid])
    subprocess.Popen([sys.executable, "-c", kid], start_new_session=True)
    print("ready", os.environ.get("MARK"), flush=True)
    time.sleep(600)
    """
)


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable the cold launcher takes for Python: it runs ``body`` whatever it is told."""
    script = tmp_path / "child.py"
    script.write_text(body)
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def _req(tmp_path: Path, task_id: str = "t1", **env: str) -> TaskLaunch:
    return TaskLaunch(task_id, tmp_path, tmp_path / f"task-{task_id}.log", env)


def test_cold_launch_leads_its_own_group_and_the_stop_sequence_kills_its_whole_tree(
    tmp_path: Path,
) -> None:
    req = _req(tmp_path, MARK="cold-env", PATH=os.environ["PATH"])

    async def scenario() -> tuple[process.TaskProcess, str, list[int]]:
        proc = await ColdLauncher(_fake_python(tmp_path, STUBBORN)).launch(req)
        await asyncio.to_thread(
            poll_for, lambda: "ready cold-env" in req.log_path.read_text(), 20, what="ready"
        )
        tree = [p.pid for p in proc.descendants()]
        assert len(tree) == 2 and os.getpgid(proc.pid) == proc.pid == proc.pgid
        assert not proc.exited
        how = await stopping.stop(proc, ask_timeout=0.3, term_timeout=0.3)
        return proc, how, tree

    proc, how, tree = asyncio.run(scenario())
    assert (proc.kind, proc.warm, how, proc.returncode) == ("cold", False, "killed", -9)
    for pid in tree:  # the one that left the group too
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_warm_launch_is_a_fork_of_the_zygote_whose_exit_the_zygote_reports(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "METASTREAM_WARM_METAGPT": "0", "METASTREAM_HOME": str(tmp_path)}
    # Its spec is a FIFO nobody writes: the fork hangs in its start-up until it is stopped.
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    task_env = {**env, "METASTREAM_TASK_SPEC": str(fifo)}

    async def scenario() -> None:
        fs = ForkServer(sys.executable, env, Path.cwd(), tmp_path / "zygote.log")
        warm = WarmLauncher(fs)
        assert not warm.ready
        with pytest.raises(LaunchUnavailable, match="not ready"):
            await warm.launch(_req(tmp_path))
        # Not ready: the next launcher serves, without trying the zygote.
        skipped: list[str] = []
        cold = ColdLauncher(_fake_python(tmp_path, "import sys; sys.exit(5)"))
        first = await launch_first(
            [warm, cold], _req(tmp_path, "t0"), lambda la, _w: skipped.append(la.name)
        )
        assert first.kind == "cold" and await first.wait(20) and first.returncode == 5
        assert skipped == []
        fs.start()
        try:
            assert await fs.wait_ready(120), (tmp_path / "zygote.log").read_text()
            assert fs.zygote is not None
            proc = await launch_first([warm, cold], _req(tmp_path, "t1", **task_env), print)
            assert (proc.kind, proc.warm) == ("warm", True)
            assert psutil.Process(proc.pid).ppid() == fs.zygote.pid  # not ours: the zygote's
            assert os.getpgid(proc.pid) == proc.pid
            assert not await proc.wait(0.5)  # it hangs, as meant
            # Asked, it dies of SIGINT as a cold interpreter would; the zygote tells us so.
            assert await stopping.stop(proc, ask_timeout=10, term_timeout=10) == "asked"
            assert proc.returncode == -signal.SIGINT
            # A fork without its spec exits 2 by itself: the status comes from the zygote.
            gone = await warm.launch(_req(tmp_path, "t2", **env))
            assert await gone.wait(30) and gone.returncode == 2
        finally:
            await fs.close(2, 2)

    asyncio.run(scenario())


def test_adopting_finds_only_the_recorded_live_process_and_cannot_read_its_status(
    tmp_path: Path,
) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"
    )
    orphan = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    try:
        assert orphan.stdout is not None and orphan.stdout.readline().strip() == "ready"
        started = psutil.Process(orphan.pid).create_time()

        async def scenario() -> process.TaskProcess:
            req = _req(tmp_path)
            with pytest.raises(LaunchUnavailable, match="no recorded process"):
                await AdoptingLauncher(None, None).launch(req)
            # Same pid, another start time: the pid was reused by an unrelated process.
            with pytest.raises(LaunchUnavailable, match="gone"):
                await AdoptingLauncher(orphan.pid, started - 5).launch(req)
            proc = await AdoptingLauncher(orphan.pid, started).launch(req)
            assert (proc.kind, proc.pgid) == ("adopted", orphan.pid)
            # Deaf to the ask: SIGTERM ends it.
            assert await stopping.stop(proc, ask_timeout=0.3, term_timeout=10) == "terminated"
            return proc

        proc = asyncio.run(scenario())
        assert proc.exited and proc.returncode is None  # an earlier supervisor's child
        status, message = outcome(
            proc.returncode, None, None, lost=False, unknown_exit=proc.unknown_exit
        )
        assert status == "FAILED" and "while the supervisor was restarting" in message
        # The task's own record stands in for the status we could not read.
        assert outcome(proc.returncode, 0, None, lost=False)[0] == "COMPLETED"
    finally:
        orphan.kill()
        orphan.wait(10)
    # Dead (a zombie nobody reaped, or gone): nothing to adopt.
    with pytest.raises(LaunchUnavailable, match="gone"):
        asyncio.run(AdoptingLauncher(orphan.pid, started).launch(_req(tmp_path)))


class _Refusing(Launcher):
    """A launcher that is ready yet refuses (a zygote that dies during the request)."""

    name = "refusing"

    async def launch(self, req: TaskLaunch) -> process.TaskProcess:
        raise LaunchUnavailable("refused")


def test_launch_first_tries_the_next_launcher_and_says_why(tmp_path: Path) -> None:
    async def scenario() -> tuple[process.TaskProcess, list[tuple[str, str]]]:
        skipped: list[tuple[str, str]] = []
        cold = ColdLauncher(_fake_python(tmp_path, "import sys; sys.exit(0)"))
        proc = await launch_first(
            [_Refusing(), cold], _req(tmp_path), lambda la, why: skipped.append((la.name, why))
        )
        assert await proc.wait(20)
        with pytest.raises(LaunchUnavailable, match="no launcher"):
            await launch_first([_Refusing()], _req(tmp_path), lambda _la, _why: None)
        return proc, skipped

    proc, skipped = asyncio.run(scenario())
    assert (proc.kind, proc.returncode, skipped) == ("cold", 0, [("refusing", "refused")])
