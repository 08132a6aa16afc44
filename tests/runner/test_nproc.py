"""RLIMIT_NPROC in landlock mode, where the task shares the user's uid (runner.sandbox)."""

from __future__ import annotations

import os
import pwd
import time

import pytest

from runner import sandbox


def test_a_shared_uid_task_may_add_only_nproc_threads() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to become an otherwise idle user (nobody)")
    nobody = pwd.getpwnam("nobody").pw_uid
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "task": nobody, with the landlock-mode limit for 5 more threads
        code = 0
        try:
            os.close(read)
            os.setresgid(nobody, nobody, nobody)
            os.setresuid(nobody, nobody, nobody)
            before = sandbox.threads_of(nobody)
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
            os.write(write, f"{before} {len(children)}".encode())
            for child in children:
                os.kill(child, 9)
                os.waitpid(child, 0)
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
    before, forked = map(int, report.split())
    assert before >= 1  # itself, at least
    assert forked == 5, report  # five more than before, then EAGAIN (50 without the limit)
