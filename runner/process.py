"""Process mechanism: spawn in a new process group, wait for exit, signal, stop.

Policy (when to stop, why) lives elsewhere; this module only knows how. Every signal tolerates
a process that is already gone.
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger("metastream.process")
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Child:
    """A task process (our child, or one adopted after a supervisor restart)."""

    pid: int
    pgid: int
    create_time: float
    popen: subprocess.Popen[bytes] | None = None  # None when adopted or forked by the zygote
    returncode: int | None = None
    adopted: bool = False  # started by an earlier supervisor: its exit code is not ours to get
    forked: bool = False  # forked from the zygote: shares its pre-imported pages
    _exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the exit; True if it exited within the timeout."""
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    pass_fds: Sequence[int] = (),
) -> Child:
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
    child = Child(pid=popen.pid, pgid=popen.pid, create_time=create_time, popen=popen)
    _watch(child)
    return child


def adopt(pid: int, create_time: float) -> Child | None:
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
    child = Child(pid=pid, pgid=pgid, create_time=create_time, adopted=True)
    _watch(child)
    return child


def _watch(child: Child) -> None:
    """Mark ``child`` exited as soon as the kernel says so (pidfd: no polling, no thread)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(child.pid)
    except ProcessLookupError:
        _reap(child)
        return

    def on_exit() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        _reap(child)

    loop.add_reader(fd, on_exit)


def _reap(child: Child) -> None:
    if child.popen is not None:
        child.returncode = child.popen.wait()
    child._exited.set()


def signal_group(child: Child, sig: int) -> None:
    """Send ``sig`` to the child's whole process group, plus any descendant that left it."""
    strays = descendants(child)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pgid, sig)
    for p in strays:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(sig)


def signal_leader(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, sig)


def descendants(child: Child) -> list[psutil.Process]:
    try:
        return psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


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


async def stop(
    child: Child, ask_timeout: float, term_timeout: float, kill_timeout: float = 2.0
) -> str:
    """The one stop sequence: ask, wait, SIGTERM the group, wait, SIGKILL. Returns how it ended.

    A zero ``ask_timeout`` skips asking; zero for both goes straight to SIGKILL.
    """
    strays = descendants(child)
    how = "exited"
    if not child.exited:
        if ask_timeout > 0:
            signal_leader(child, signal.SIGINT)  # ask: the task flushes its log and exits
        if ask_timeout > 0 and await child.wait(ask_timeout):
            how = "asked"
        else:
            if term_timeout > 0:
                signal_group(child, signal.SIGTERM)
            if term_timeout > 0 and await child.wait(term_timeout):
                how = "terminated"
            else:
                signal_group(child, signal.SIGKILL)
                await child.wait(kill_timeout)
                how = "killed"
    await asyncio.to_thread(reap_group, child, strays)
    return how


def reap_group(child: Child, strays: Sequence[psutil.Process] = ()) -> None:
    """SIGKILL whatever is left of the task's tree once its leader is gone, and reap it."""
    leftovers = {p.pid: p for p in (*group_members(child.pgid), *strays) if p.pid != child.pid}
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pgid, signal.SIGKILL)
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


def tree_rss_mb(child: Child, over: float = 0.0) -> float:
    """Resident memory of the task's whole process tree, in MB.

    A task forked from the zygote counts its unique memory (USS) instead of its RSS: the
    pre-imported pages it still shares with the zygote are not its own. Measuring USS walks
    the process's page tables (~6 ms of CPU for a forked MetaGPT task, at every check, and
    it holds the task's memory map meanwhile), so it is only measured when the RSS total is
    above ``over`` (RSS >= USS: below that, the exact figure would be below it too).
    """
    try:
        leader = psutil.Process(child.pid)
        procs = [leader, *descendants(child)]
    except psutil.NoSuchProcess:
        return 0.0
    rss: dict[psutil.Process, int] = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            rss[p] = p.memory_info().rss
    mb = 1024 * 1024
    if not child.forked or leader not in rss or sum(rss.values()) / mb <= over:
        return sum(rss.values()) / mb
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        rss[leader] = leader.memory_full_info().uss
    return sum(rss.values()) / mb


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
