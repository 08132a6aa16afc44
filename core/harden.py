"""Hardening of the trusted processes (bus, supervisor, gateway): private files, no peeking."""

from __future__ import annotations

import ctypes
import os

PR_SET_DUMPABLE = 4


def harden_trusted() -> None:
    """umask 077, and ``PR_SET_DUMPABLE`` 0.

    Not dumpable, a process's ``/proc/<pid>/environ`` and memory are unreadable to other
    processes of the same uid (a Landlock-confined task runs as the same user), and it leaves
    no core file with its secrets.
    """
    os.umask(0o077)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
