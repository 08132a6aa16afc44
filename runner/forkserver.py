"""The warm path: task processes forked from a pre-imported zygote instead of a cold interpreter.

The supervisor keeps one zygote (``runner.forkserver_zygote``) as its child, restarting it in
the background when it dies. A forked task is still its own OS process, in its own session,
used for one task only; its exit status comes from the zygote, which reaps it. Should the
zygote die first, its children are re-parented to the supervisor (a child subreaper), which
then reaps them itself. Whenever the zygote is not ready, callers start tasks cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from runner import process
from runner.forkserver_zygote import HEADER, MAX_FRAME, Exited, Forked, Ready, decode, frame
from runner.forkserver_zygote import Fork as ForkRequest

log = logging.getLogger("metastream.forkserver")
REPORT_GRACE = 2.0  # after a fork exits, how long the zygote may take to report it
ORPHAN_REAP_TIMEOUT = 1.0  # re-parenting to us follows the zygote's death by a moment


class ForkServerError(Exception):
    """The fork server could not start the task: start it cold instead."""


class ForkServer:
    """Client of the zygote: start it, fork tasks from it, learn how they exit."""

    def __init__(
        self,
        python: str,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        spawn_timeout: float = 5.0,
        restart_delay: float = 1.0,
    ) -> None:
        self.python = python
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.spawn_timeout = spawn_timeout
        self.restart_delay = restart_delay
        self.zygote: process.Child | None = None
        self.metagpt = False
        self.restarts = 0
        self._ready = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[process.Child]] = {}
        self._children: dict[int, process.Child] = {}
        self._next_id = 0
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def start(self) -> None:
        """Keep a zygote running in the background (it takes seconds to import)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._keep_running())

    async def close(self, ask_timeout: float = 2.0, term_timeout: float = 3.0) -> None:
        """Stop the zygote with the one stop sequence; no restart after this."""
        self._closing = True
        if self.zygote is not None:
            await process.stop(self.zygote, ask_timeout, term_timeout)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def spawn(
        self, task_id: str, env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> process.Child:
        """Fork the task process ``python -m runner.task TASK_ID`` would be; raise if we can't."""
        if not self.ready or self._writer is None:
            raise ForkServerError("fork server not ready")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._next_id += 1
        req = ForkRequest(self._next_id, task_id, dict(env), str(cwd), str(log_path))
        fut: asyncio.Future[process.Child] = asyncio.get_running_loop().create_future()
        self._pending[req.id] = fut
        try:
            self._writer.write(frame(req))
            return await asyncio.wait_for(fut, self.spawn_timeout)
        except TimeoutError:
            self._kill_zygote("no answer to a fork request")
            raise ForkServerError("fork server did not answer") from None
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: writer already closed
            raise ForkServerError(f"fork server unreachable: {exc}") from exc
        finally:
            self._pending.pop(req.id, None)

    # --- the zygote's life ------------------------------------------------------------------

    async def _keep_running(self) -> None:
        delay = self.restart_delay
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self._run_once()
            except OSError as exc:
                log.warning("could not start the fork server: %s", exc)
            if self._closing:
                return
            rc = self.zygote.returncode if self.zygote is not None else None
            if loop.time() - began > 60:
                delay = self.restart_delay  # it ran a good while: not a crash loop
            log.warning(
                "fork server ended (%s): tasks start cold; restarting it in %.0f s",
                process.describe_exit(rc),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            self.restarts += 1

    async def _run_once(self) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.zygote = process.spawn(
                [self.python, "-m", "runner.forkserver_zygote", str(theirs.fileno())],
                env=self.env,
                cwd=self.cwd,
                log_path=self.log_path,
                pass_fds=[theirs.fileno()],
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=mine)
        try:
            await self._serve(reader)
        finally:
            self._lost()
            self._writer.close()
            self._writer = None
            if not self._closing:
                process.signal_leader(self.zygote, signal.SIGKILL)  # it hung up: no half-zygote
            await self.zygote.wait()

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if n > MAX_FRAME:
                    raise ValueError(f"frame of {n} bytes")
                msg = decode(await reader.readexactly(n))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except ValueError as exc:  # msgspec errors are ValueErrors
                log.error("bad message from the fork server: %s", exc)
                return
            self._handle(msg)

    def _handle(self, msg: object) -> None:
        match msg:
            case Ready(pid=pid, metagpt=mg):
                self.metagpt = mg
                self._ready.set()
                log.info("fork server ready (pid %d, MetaGPT pre-imported: %s)", pid, mg)
            case Forked():
                self._forked(msg)
            case Exited(pid=pid, returncode=rc):
                child = self._children.pop(pid, None)
                if child is not None:
                    child.returncode = rc
                    child._exited.set()

    def _forked(self, msg: Forked) -> None:
        fut = self._pending.get(msg.id)
        if msg.error is not None:
            if fut is not None and not fut.done():
                fut.set_exception(ForkServerError(msg.error))
            return
        child = process.Child(pid=msg.pid, pgid=msg.pid, create_time=msg.create_time, forked=True)
        self._children[msg.pid] = child
        if fut is None or fut.done():  # the request timed out: nobody will track this task
            log.warning("killing task process %d forked after its request timed out", msg.pid)
            process.signal_group(child, signal.SIGKILL)
            return
        _when_dead(child.pid, lambda: self._dead(child))
        fut.set_result(child)

    def _dead(self, child: process.Child) -> None:
        """The kernel says it exited: the zygote's report should follow at once."""
        if child.exited:
            return
        if child.pid not in self._children:
            _reap_orphan(child)  # the zygote is gone: we are its parent now
            return

        def overdue() -> None:
            if not child.exited:
                self._kill_zygote(f"no exit report for task process {child.pid}")

        asyncio.get_running_loop().call_later(REPORT_GRACE, overdue)

    def _lost(self) -> None:
        """The zygote is gone: fail what waits on it, and reap its children ourselves."""
        self._ready.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ForkServerError("fork server ended"))
        orphans = list(self._children.values())
        self._children.clear()
        for child in orphans:
            _when_dead(child.pid, functools.partial(_reap_orphan, child))

    def _kill_zygote(self, why: str) -> None:
        """SIGKILL a zygote that stopped answering, and any fork of it nobody knows of."""
        zygote = self.zygote
        if zygote is None or zygote.exited:
            return
        log.error("fork server unresponsive (%s): killing it", why)
        known = set(self._children)
        for p in process.descendants(zygote):
            with contextlib.suppress(psutil.Error):
                if p.ppid() == zygote.pid and p.pid not in known:
                    p.kill()
        process.signal_leader(zygote, signal.SIGKILL)  # not the group: tasks live on


def _when_dead(pid: int, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once ``pid`` has exited (pidfd: no polling)."""
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


def _reap_orphan(child: process.Child, waited: float = 0.0) -> None:
    """Collect the exit status of a fork whose zygote died (it becomes our child, a moment on)."""
    if child.exited:
        return
    try:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:
        pid, status = 0, 0
        if waited >= ORPHAN_REAP_TIMEOUT or not psutil.pid_exists(child.pid):
            child._exited.set()  # reaped elsewhere: exit status unknown
            return
    if pid:
        child.returncode = os.waitstatus_to_exitcode(status)
        child._exited.set()
        return
    asyncio.get_running_loop().call_later(0.02, _reap_orphan, child, waited + 0.02)
