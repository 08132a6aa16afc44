"""Process mechanism: the handles of task processes, process groups, signals, reaping.

A :class:`TaskProcess` is what the supervisor holds of a task's process, however it began:
spawned cold here (:class:`SpawnedProcess`), forked by the zygote
(``runner.forkserver.ForkedProcess``) or adopted after a supervisor restart
(:class:`AdoptedProcess`). Each kind only differs in how its exit is learnt. Policy (when to
stop, why, in which order: ``runner.stopping``) lives elsewhere; this module only knows how.
Every signal tolerates a process that is already gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import psutil

log = logging.getLogger("metastream.process")
PR_SET_CHILD_SUBREAPER = 36


class TaskProcess(ABC):
    """A task's process group leader: wait for it, signal it, measure it, reap what it left."""

    kind: ClassVar[str]  # how it began ("cold", "warm", "adopted"): a metrics label
    # Forked from the zygote: it shares the zygote's pre-imported pages (they are not its own).
    warm: ClassVar[bool] = False

    def __init__(self, pid: int, create_time: float, pgid: int | None = None) -> None:
        self.pid = pid
        self.pgid = pid if pgid is None else pgid
        self.create_time = create_time
        self._returncode: int | None = None
        self._exited = asyncio.Event()

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (negative: killed by that signal); None if unknown."""
        return self._returncode

    @property
    def exited(self) -> bool:
        """Poll: whether it has exited (its status, if it can be known, is then set)."""
        return self._exited.is_set()

    @property
    @abstractmethod
    def unknown_exit(self) -> str:
        """Why its exit status may be unknown once it exited (what a final message says)."""

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the exit; True if it exited within the timeout."""
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _ended(self, returncode: int | None) -> None:
        """Record the exit (once): for the subclass's own way of learning it."""
        if not self._exited.is_set():
            self._returncode = returncode
            self._exited.set()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the leader only (asking it to stop: it tells its own children)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group, plus any descendant that left it."""
        signal_group(self.pgid, self.descendants(), sig)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def reap_leftovers(self, strays: Sequence[psutil.Process] = ()) -> None:
        """SIGKILL whatever is left of its tree once the leader is gone, and reap it (blocks)."""
        reap_group(self.pid, self.pgid, strays)

    def rss_mb(self, over: float = 0.0) -> float:
        """Resident memory of its whole process tree, in MB.

        A warm process counts its unique memory (USS) instead of its RSS: the pre-imported
        pages it still shares with the zygote are not its own. Measuring USS walks the
        process's page tables (~6 ms of CPU for a forked MetaGPT task, at every check, and it
        holds the task's memory map meanwhile), so it is only measured when the RSS total is
        above ``over`` (RSS >= USS: below that, the exact figure would be below it too).
        """
        try:
            leader = psutil.Process(self.pid)
            procs = [leader, *self.descendants()]
        except psutil.NoSuchProcess:
            return 0.0
        rss: dict[psutil.Process, int] = {}
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss[p] = p.memory_info().rss
        mb = 1024 * 1024
        if not self.warm or leader not in rss or sum(rss.values()) / mb <= over:
            return sum(rss.values()) / mb
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            rss[leader] = leader.memory_full_info().uss
        return sum(rss.values()) / mb

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} returncode={self.returncode}>"


class SpawnedProcess(TaskProcess):
    """Our own child, started here (a cold task, or the zygote): we reap it, its status is ours."""

    kind = "cold"

    def __init__(self, popen: subprocess.Popen[bytes], create_time: float) -> None:
        super().__init__(popen.pid, create_time)
        self._popen = popen
        when_dead(self.pid, lambda: self._ended(self._popen.wait()))

    @property
    def unknown_exit(self) -> str:
        return "failed (exit status unknown)"  # never: we reap it ourselves


class AdoptedProcess(TaskProcess):
    """A task process an earlier supervisor started: its exit status is not ours to read."""

    kind = "adopted"

    def __init__(self, pid: int, create_time: float, pgid: int) -> None:
        super().__init__(pid, create_time, pgid)
        when_dead(self.pid, lambda: self._ended(None))

    @property
    def unknown_exit(self) -> str:
        return "ended while the supervisor was restarting (exit status unknown)"


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    pass_fds: Sequence[int] = (),
) -> SpawnedProcess:
    """Start ``argv`` as the leader of a new process group and watch for its exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and group: killpg reaches the whole tree
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0
    return SpawnedProcess(popen, create_time)


def adopt(pid: int, create_time: float) -> AdoptedProcess | None:
    """Watch a live process we did not start (after a supervisor restart), if it is ours."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return None  # the pid was reused by an unrelated process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None  # it already ended while nobody watched
        pgid = os.getpgid(pid)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return None
    return AdoptedProcess(pid, create_time, pgid)


def when_dead(pid: int, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once ``pid`` has exited (pidfd: no polling, no thread)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        loop.call_soon(callback)
        return

    def fired() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        callback()

    loop.add_reader(fd, fired)


def signal_group(pgid: int, strays: Iterable[psutil.Process], sig: int) -> None:
    """Send ``sig`` to a process group and to ``strays`` (descendants that left it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for p in strays:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(sig)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def reap_group(leader: int, pgid: int, strays: Sequence[psutil.Process] = ()) -> None:
    """SIGKILL whatever is left of a tree once its leader is gone, and reap it."""
    leftovers = {p.pid: p for p in (*group_members(pgid), *strays) if p.pid != leader}
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for p in leftovers.values():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()
    _reap_orphans(leftovers.values())


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so that no task leaves zombies behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_orphans(procs: Iterable[psutil.Process], timeout: float = 1.0) -> None:
    """Collect the exit status of killed descendants re-parented to us (we are a subreaper).

    A process whose parent dies only becomes ours a moment later, so keep trying until each
    is reaped, gone, or clearly someone else's.
    """
    me = os.getpid()
    pending = {p.pid for p in procs}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pending.discard(pid)
                continue
            except ChildProcessError:
                pass
            try:
                proc = psutil.Process(pid)
                if proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() not in (me, 0):
                    parent = psutil.Process(proc.ppid())
                    if parent.status() != psutil.STATUS_ZOMBIE and parent.pid == 1:
                        pending.discard(pid)  # init's to reap, not ours
            except psutil.NoSuchProcess:
                pending.discard(pid)
        if pending:
            time.sleep(0.01)


def describe_exit(returncode: int | None) -> str:
    """Human text for an exit status (negative = killed by a signal)."""
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"
