"""Launchers: how a task's process comes to be, behind one interface (cf. jupyter_client's
kernel provisioners).

A launcher turns a :class:`TaskLaunch` into a :class:`runner.process.TaskProcess`; whoever
holds that handle waits for it, signals it, measures it and stops it (``runner.stopping``) the
same way whatever launched it. Three kinds:

- :class:`ColdLauncher`: a fresh interpreter, ``python -m runner.task TASK_ID``;
- :class:`WarmLauncher`: a fork of the pre-imported zygote (``runner.forkserver``);
- :class:`AdoptingLauncher`: the process an earlier supervisor started and recorded, found
  alive again after a restart.

A launcher that cannot serve a request raises :class:`LaunchUnavailable`: the caller tries the
next one (warm, then cold) or, for adoption, knows the process is gone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from runner import process
from runner.forkserver import ForkServer, ForkServerError


class LaunchUnavailable(Exception):
    """This launcher cannot give the task its process now (another one may)."""


@dataclass(frozen=True)
class TaskLaunch:
    """What a task's process is: its task, environment, working directory and log file."""

    task_id: str
    cwd: Path
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)


class Launcher(ABC):
    """Gives a task its process and the handle to it."""

    name: ClassVar[str]

    @property
    def ready(self) -> bool:
        """Whether :meth:`launch` may succeed now (cheap: no process is started to find out)."""
        return True

    @abstractmethod
    async def launch(self, req: TaskLaunch) -> process.TaskProcess:
        """Start (or find) the task's process; raise LaunchUnavailable if this launcher can't.

        Other errors (OSError: no such interpreter, no room for a process) propagate.
        """


class ColdLauncher(Launcher):
    """A fresh interpreter per task: slow to start, always available."""

    name = "cold"

    def __init__(self, python: str) -> None:
        self.python = python

    async def launch(self, req: TaskLaunch) -> process.TaskProcess:
        argv = [self.python, "-m", "runner.task", req.task_id]
        return process.spawn(argv, env=req.env, cwd=req.cwd, log_path=req.log_path)


class WarmLauncher(Launcher):
    """A fork of the zygote, which already imported the task's code (MetaGPT included)."""

    name = "warm"

    def __init__(self, forkserver: ForkServer) -> None:
        self.forkserver = forkserver

    @property
    def ready(self) -> bool:
        return self.forkserver.ready

    async def launch(self, req: TaskLaunch) -> process.TaskProcess:
        try:
            return await self.forkserver.spawn(req.task_id, req.env, req.cwd, req.log_path)
        except ForkServerError as exc:
            raise LaunchUnavailable(str(exc)) from exc


class AdoptingLauncher(Launcher):
    """The live process recorded for the task (pid and start time), after a restart.

    Its start time tells it from an unrelated process that reused the pid.
    """

    name = "adopted"

    def __init__(self, pid: int | None, create_time: float | None) -> None:
        self.pid = pid
        self.create_time = create_time

    async def launch(self, req: TaskLaunch) -> process.TaskProcess:
        if self.pid is None or self.create_time is None:
            raise LaunchUnavailable(f"task {req.task_id} has no recorded process")
        proc = process.adopt(self.pid, self.create_time)
        if proc is None:
            raise LaunchUnavailable(f"task {req.task_id}'s process {self.pid} is gone")
        return proc


async def launch_first(
    launchers: list[Launcher], req: TaskLaunch, on_skip: Callable[[Launcher, str], None]
) -> process.TaskProcess:
    """The first ready launcher's process (``on_skip`` hears each one that could not)."""
    for launcher in launchers:
        if not launcher.ready:
            continue
        try:
            return await launcher.launch(req)
        except LaunchUnavailable as exc:
            on_skip(launcher, str(exc))
    raise LaunchUnavailable("no launcher could start the task")
