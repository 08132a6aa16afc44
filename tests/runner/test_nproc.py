"""RLIMIT_NPROC in landlock mode, where the task shares the user's uid (runner.sandbox)."""

from __future__ import annotations

import os
import pwd
import resource
import time
from collections.abc import Callable

import pytest

from runner import sandbox


def _as_nobody(fn: Callable[[], str]) -> str:
    """``fn()`` in a forked child running as nobody (an otherwise idle uid); its report."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to become nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read)
            os.setresgid(nobody, nobody, nobody)
            os.setresuid(nobody, nobody, nobody)
            os.write(write, fn().encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    try:
        report = os.read(read, 100).decode()
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return report


def test_the_limit_is_the_machines_threads_plus_nproc() -> None:
    def limit() -> str:
        before = sandbox.threads_now()
        sandbox._limits(sandbox.Plan(mode="landlock", nproc=5))
        after = sandbox.threads_now()
        return f"{before} {resource.getrlimit(resource.RLIMIT_NPROC)[0]} {after}"

    before, value, after = map(int, _as_nobody(limit).split())
    assert before + 5 <= value <= after + 5


def test_a_fork_bomb_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the machine ran only this one thread: the limit is then 1 + 5.
    monkeypatch.setattr(sandbox, "threads_now", lambda: 1)

    def bomb() -> str:
        sandbox._limits(sandbox.Plan(mode="landlock", nproc=5))
        children = []
        for _ in range(50):
            try:
                child = os.fork()
            except BlockingIOError:
                break
            if child == 0:
                time.sleep(30)
                os._exit(0)
            children.append(child)
        for child in children:
            os.kill(child, 9)
            os.waitpid(child, 0)
        return str(len(children))

    assert _as_nobody(bomb) == "5"  # then EAGAIN (50 without the limit)
