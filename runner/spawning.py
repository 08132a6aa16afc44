"""How the supervisor makes a task's process: its sandbox, directories, environment, spawn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from bus import auth as bus_auth
from core.settings import INTERNAL_ENV, SECRET_ENV, Settings
from runner import process, sandbox
from runner.forkserver import ForkServer
from runner.launchers import ColdLauncher, Launcher, TaskLaunch, WarmLauncher, launch_first
from runner.task import spec as task_spec
from store import Store
from store.dburl import is_sqlite

log = logging.getLogger("metastream.supervisor")
# Never inherited by a task from the supervisor's environment (_spawn sets its own).
_NOT_FOR_TASKS = ("METASTREAM_API_TOKEN_FILE", *INTERNAL_ENV)


class Spawning:
    """Mixin of :class:`runner.supervisor.Supervisor`: a task's process and its sandbox."""

    cfg: Settings
    store: Store
    uids: sandbox.UidPool
    forkserver: ForkServer | None
    _bus_master: bytes | None
    _read_only: list[str] | None

    def _plan(self, task_id: str) -> tuple[sandbox.Plan, list[Path]]:
        """The task's sandbox and its own directories (workspace, log, private tmp)."""
        cfg = self.cfg
        dirs = sandbox.task_dirs(
            cfg.task_dir(task_id), self.store.event_dir(task_id), cfg.sandbox_tmp_dir / task_id
        )
        if cfg.sandbox_mode == "off":
            return sandbox.Plan(mode="off"), dirs
        if self._read_only is None:
            self._read_only = sandbox.interpreter_paths(cfg.home)
        uid = self.uids.acquire() if cfg.sandbox_mode == "uid" else None
        bus = [cfg.bus_pub[len("ipc://") :]] if cfg.bus_pub.startswith("ipc://") else []
        plan = sandbox.Plan(
            mode=cfg.sandbox_mode,
            uid=uid,
            gid=uid,
            read_only=(*self._read_only, "/dev"),
            read_write=(*(str(d) for d in dirs), *sandbox.DEVICES),
            reach=tuple(sandbox.unreachable([*self._read_only, *map(str, dirs), *bus]))
            if uid is not None
            else (),
            nofile=cfg.task_nofile,
            nproc=cfg.task_nproc,
            address_space_mb=cfg.task_address_space_mb,
            cpu_seconds=cfg.task_cpu_seconds,
            tcp_ports=self._tcp_ports() if cfg.task_network == "restricted" else None,
        )
        return plan, dirs

    def _tcp_ports(self) -> tuple[int, ...]:
        """What a task must reach over TCP: the database, the LLM endpoint, a tcp bus."""
        cfg = self.cfg
        urls = [cfg.llm_base_url, cfg.bus_pub]
        if not is_sqlite(cfg.db_url):
            urls.append(cfg.db_url)
        return tuple(sorted({p for u in urls if (p := sandbox.tcp_port(u)) is not None}))

    def _prepare(self, plan: sandbox.Plan, dirs: list[Path], spec: task_spec.TaskSpec) -> Path:
        """Make the task's directories its own and leave its spec in its private tmp."""
        sandbox.prepare(plan, dirs)
        path = dirs[-1] / "task.json"
        task_spec.write(path, spec)
        if plan.uid is not None and plan.gid is not None:
            os.chown(path, plan.uid, plan.gid)
        return path

    async def _spawn(
        self,
        task_id: str,
        workspace: Path,
        plan: sandbox.Plan,
        spec_path: Path,
        needs_llm: bool = False,
    ) -> process.TaskProcess:
        """The task's process: forked warm from the zygote when it is ready, else cold."""
        env = self._task_env(llm=needs_llm)
        env[task_spec.SPEC_ENV] = str(spec_path)
        if self._bus_master is not None:
            env.update(bus_auth.task_env(self._bus_master, task_id))
        if plan.mode != "off":
            env[sandbox.PLAN_ENV] = msgspec.json.encode(plan).decode()
            env["TMPDIR"] = env["HOME"] = str(spec_path.parent)
        if plan.uid is not None:
            # Its uid has no passwd entry: getpass.getuser() (MetaGPT calls it) asks these.
            env["USER"] = env["LOGNAME"] = f"task{plan.uid}"
        req = TaskLaunch(task_id, workspace, self._log_path(task_id), env)

        def skipped(launcher: Launcher, why: str) -> None:
            log.warning(
                "task %s: no %s start (%s): trying the next way", task_id, launcher.name, why
            )

        return await launch_first(self._launchers(), req, skipped)

    def _launchers(self) -> list[Launcher]:
        """The ways to start a task, preferred first (a zygote's fork, else a cold start)."""
        cold = ColdLauncher(self.cfg.python)
        return [WarmLauncher(self.forkserver), cold] if self.forkserver is not None else [cold]

    def _log_path(self, task_id: str) -> Path:
        return self.cfg.logs_dir / f"task-{task_id}.log"

    def start_forkserver(self) -> ForkServer:
        """Start the zygote in the background: tasks start cold until it is ready."""
        self.forkserver = ForkServer(
            self.cfg.python,
            env=self._task_env(),
            cwd=self.cfg.home,
            log_path=self.cfg.logs_dir / "forkserver.log",
        )
        self.forkserver.start()
        return self.forkserver

    def _task_env(self, llm: bool = False) -> dict[str, str]:
        # Only what a task needs: paths, bus, its interpreter's basics; no secrets of the
        # gateway (API tokens never reach task processes), the LLM key only to a task that
        # calls a real LLM, the bus key only its own (added by _spawn).
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "TMPDIR", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("METASTREAM_")}
        for secret in (*SECRET_ENV, *_NOT_FOR_TASKS):
            env.pop(secret, None)
        for k in list(env):
            if k.startswith("METASTREAM_LLM_"):
                del env[k]
        # A server database's URL carries the stack's credentials: a task gets its own role's
        # URL in its spec file instead (store.taskroles), and the zygote gets none.
        env.pop("METASTREAM_DB_URL", None)
        if is_sqlite(self.cfg.db_url):
            env["METASTREAM_DB_URL"] = self.cfg.db_url
        env.update(
            METASTREAM_HOME=str(self.cfg.home),
            METASTREAM_BUS_PUB=self.cfg.bus_pub,
            METASTREAM_BUS_SUB=self.cfg.bus_sub,
            PYTHONUNBUFFERED="1",
        )
        # `python` on the task's PATH is its own interpreter: MetaGPT's QA engineer runs the
        # generated code with whatever `python` it finds, and the sandbox hides the others
        # (pyenv's shims under /root, for one).
        bin_dir = os.path.dirname(self.cfg.python)
        env["PATH"] = os.pathsep.join(
            [bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)]
        )
        if llm:
            env.update((k, v) for k, v in os.environ.items() if k.startswith("METASTREAM_LLM_"))
        return env

    def _adopted_plan(self, task_id: str) -> tuple[sandbox.Plan, list[Path]]:
        """An adopted task's uid (its workspace's owner), so that its end releases it."""
        cfg = self.cfg
        dirs = sandbox.task_dirs(
            cfg.task_dir(task_id), self.store.event_dir(task_id), cfg.sandbox_tmp_dir / task_id
        )
        if cfg.sandbox_mode != "uid":
            return sandbox.Plan(mode=cfg.sandbox_mode), dirs
        try:
            uid = cfg.task_dir(task_id).stat().st_uid
        except OSError:
            return sandbox.Plan(mode="off"), dirs
        if uid == os.getuid():
            return sandbox.Plan(mode="off"), dirs
        self.uids.reserve(uid)
        return sandbox.Plan(mode="uid", uid=uid, gid=uid), dirs
