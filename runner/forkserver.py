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
import logging
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import psutil

from runner import process, stopping
from runner.forkserver_zygote import HEADER, MAX_FRAME, Exited, Forked, Ready, decode, frame
from runner.forkserver_zygote import Fork as ForkRequest

log = logging.getLogger("metastream.forkserver")
REPORT_GRACE = 2.0  # after a fork exits, how long the zygote may take to report it
ORPHAN_REAP_TIMEOUT = 1.0  # re-parenting to us follows the zygote's death by a moment


class ForkServerError(Exception):
    """The fork server could not start the task: start it cold instead."""


class ForkedProcess(process.TaskProcess):
    """A task process forked by the zygote: the zygote reaps it and reports its exit status.

    Should the zygote die first, the fork is re-parented to us (a child subreaper) and we
    reap it ourselves.
    """

    kind = "warm"
    warm = True

    @property
    def unknown_exit(self) -> str:
        return "failed (exit status unknown)"  # reaped elsewhere: only if the zygote died

    def reported(self, returncode: int) -> None:
        """The zygote reaped it and reported its status."""
        self._ended(returncode)

    def orphaned(self) -> None:
        """Its zygote is gone: once it exits, collect its status ourselves."""
        process.when_dead(self.pid, self._reap_orphan)

    def _reap_orphan(self, waited: float = 0.0) -> None:
        # It becomes our child a moment after the zygote's death, hence the retries.
        if self.exited:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
            if waited >= ORPHAN_REAP_TIMEOUT or not psutil.pid_exists(self.pid):
                self._ended(None)  # reaped elsewhere: exit status unknown
                return
        if pid:
            self._ended(os.waitstatus_to_exitcode(status))
            return
        asyncio.get_running_loop().call_later(0.02, self._reap_orphan, waited + 0.02)


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
        self.zygote: process.SpawnedProcess | None = None
        self.metagpt = False
        self.restarts = 0
        self._ready = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
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
            await stopping.stop(self.zygote, ask_timeout, term_timeout)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def spawn(
        self, task_id: str, env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> ForkedProcess:
        """Fork the task process ``python -m runner.task TASK_ID`` would be; raise if we can't."""
        if not self.ready or self._writer is None:
            raise ForkServerError("fork server not ready")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._next_id += 1
        req = ForkRequest(self._next_id, task_id, dict(env), str(cwd), str(log_path))
        fut: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
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
                self.zygote.signal(signal.SIGKILL)  # it hung up: no half-zygote
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
                    child.reported(rc)

    def _forked(self, msg: Forked) -> None:
        fut = self._pending.get(msg.id)
        if msg.error is not None:
            if fut is not None and not fut.done():
                fut.set_exception(ForkServerError(msg.error))
            return
        child = ForkedProcess(msg.pid, msg.create_time)
        self._children[msg.pid] = child
        if fut is None or fut.done():  # the request timed out: nobody will track this task
            log.warning("killing task process %d forked after its request timed out", msg.pid)
            child.signal_group(signal.SIGKILL)
            return
        process.when_dead(child.pid, lambda: self._dead(child))
        fut.set_result(child)

    def _dead(self, child: ForkedProcess) -> None:
        """The kernel says it exited: the zygote's report should follow at once."""
        if child.exited:
            return
        if child.pid not in self._children:
            child.orphaned()  # the zygote is gone: we are its parent now
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
            child.orphaned()

    def _kill_zygote(self, why: str) -> None:
        """SIGKILL a zygote that stopped answering, and any fork of it nobody knows of."""
        zygote = self.zygote
        if zygote is None or zygote.exited:
            return
        log.error("fork server unresponsive (%s): killing it", why)
        known = set(self._children)
        for p in zygote.descendants():
            with contextlib.suppress(psutil.Error):
                if p.ppid() == zygote.pid and p.pid not in known:
                    p.kill()
        zygote.signal(signal.SIGKILL)  # not the group: tasks live on
