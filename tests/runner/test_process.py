"""The process mechanism against real misbehaving children."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from runner import process, stopping
from runner.forkserver import ForkedProcess
from tests.helpers import poll_for

POLITE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\n"
    "print('ready', flush=True)\n"
)
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    kid = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", kid])
    print("ready", flush=True)
    """
)


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(body + "\ntime.sleep(600)\n")
    return [sys.executable, str(path)]


def test_stop_asks_first(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, int | None]:
        log = tmp_path / "l"
        child = process.spawn(_script(tmp_path, POLITE), os.environ, tmp_path, log)
        # Asked only once it listens: before its handler is set, SIGINT would kill it outright.
        await asyncio.to_thread(poll_for, lambda: "ready" in log.read_text(), 10)
        how = await stopping.stop(child, ask_timeout=5, term_timeout=5)
        return how, child.returncode

    assert asyncio.run(scenario()) == ("asked", 0)


def test_stop_escalates_to_sigkill_and_reaps_the_tree(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, int | None, int, list[int]]:
        log = tmp_path / "log"
        child = process.spawn(_script(tmp_path, STUBBORN), os.environ, tmp_path, log)
        await asyncio.to_thread(poll_for, lambda: "ready" in log.read_text(), 10)
        tree = [p.pid for p in child.descendants()]
        assert tree, "the grandchild should exist"
        t0 = time.monotonic()
        how = await stopping.stop(child, ask_timeout=0.3, term_timeout=0.3)
        return how, child.returncode, int(time.monotonic() - t0), tree

    how, rc, took, tree = asyncio.run(scenario())
    # Its own timeouts add up to 2.6 s (ask 0.3, term 0.3, kill 2): a generous bound.
    assert how == "killed" and rc == -9 and took < 10
    for pid in tree:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_exit_is_seen_without_polling(tmp_path: Path) -> None:
    async def scenario() -> tuple[int | None, float]:
        # The child stamps the moment it exits (CLOCK_MONOTONIC is system-wide).
        argv = [sys.executable, "-c", "import os, time; print(time.monotonic()); os._exit(7)"]
        log = tmp_path / "l"
        child = process.spawn(argv, os.environ, tmp_path, log)
        assert await child.wait(30)
        seen = time.monotonic()
        return child.returncode, seen - float(log.read_text().split()[0])

    rc, took = asyncio.run(scenario())
    # Seen from the exit itself (pidfd), not a poll: generous for a loaded machine.
    assert rc == 7 and took < 2, took
    assert process.describe_exit(-11) == "killed by SIGSEGV"
    assert process.describe_exit(3) == "exit code 3"


def test_memory_of_a_fork_is_measured_exactly_only_when_it_could_matter() -> None:
    code = "import time; print('ready', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        p = psutil.Process(proc.pid)  # started: its memory no longer grows

        def rss() -> float:
            return p.memory_info().rss / (1 << 20)

        # Measured as if it were a fork of the zygote (only how it is measured matters here).
        child = ForkedProcess(proc.pid, p.create_time())
        # Under the limit by RSS alone: no page-table walk, the RSS figure (an upper bound).
        cheap = child.rss_mb(over=10 * rss())
        # Over it by RSS: the exact figure, the fork's own pages (USS) only.
        exact = child.rss_mb(over=0.0)
        assert abs(cheap - rss()) < 0.1 * rss()
        assert exact < cheap  # shared libraries and the like are not its own

        async def plain() -> float:  # not a fork: its RSS, whatever the limit
            adopted = process.adopt(proc.pid, p.create_time())
            assert adopted is not None
            return adopted.rss_mb(over=0.0)

        assert abs(asyncio.run(plain()) - rss()) < 0.1 * rss()
    finally:
        proc.kill()
        proc.wait(5)
