"""Configuration from the environment, shared by every process of one stack.

All runtime state lives under ``METASTREAM_HOME`` (default ``./var``) so that two stacks with
different homes and ports can run side by side without touching each other.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec

# Unix socket paths are limited to ~107 bytes; longer homes get their sockets in a private
# directory under the system temp dir, named after the home so every process agrees on it.
_MAX_IPC_PATH = 100


class _Env:
    """Typed reads of one environment mapping; a bad value names its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return value if value else default

    def number(self, name: str, default: float) -> float:
        raw = self._environ.get(name)
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError as exc:
            raise ValueError(f"{name} must be a number, got {raw!r}") from exc

    def integer(self, name: str, default: int) -> int:
        raw = self._environ.get(name)
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from exc

    def flag(self, name: str) -> bool:
        return self._environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list, blanks dropped."""
        return tuple(p.strip() for p in self._environ.get(name, "").split(",") if p.strip())


class Secrets:
    """Secret strings that never show in a repr (settings get logged and printed)."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[str, ...] = ()) -> None:
        self.values = values

    def __bool__(self) -> bool:
        return bool(self.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secrets) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"Secrets(<{len(self.values)} hidden>)"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved configuration of one metastream stack."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    db_url: str = ""
    bus_pub: str = ""  # publishers connect here (the proxy's XSUB side)
    bus_sub: str = ""  # subscribers connect here (the proxy's XPUB side)
    control: str = ""  # the supervisor's request channel
    python: str = ""  # interpreter for task processes
    max_running: int = 4
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    stop_ask_timeout: float = 2.0
    stop_term_timeout: float = 3.0
    control_timeout: float = 5.0
    # Small on purpose: a connection that is behind is cheaper to serve from the (shared,
    # cached) log than through the bus; see gateway/logreader.py.
    ws_queue_size: int = 16
    ws_heartbeat_interval: float = 15.0
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    replay_page: int = 2000
    disconnect_policy: str = "continue"
    disconnect_grace: float = 30.0
    lease_ttl: float = 3.0
    task_timeout: float = 0.0
    task_memory_mb: float = 0.0
    ws_max_per_task: int = 100
    # Security and limits (docs/security.md).
    api_tokens: Secrets = Secrets()
    ticket_secret: Secrets = Secrets()
    ticket_ttl: float = 60.0
    insecure: bool = False
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    max_json_depth: int = 32
    max_requirement: int = 20_000
    ws_max_message_bytes: int = 65_536
    ws_max_per_client: int = 256
    create_rate: float = 10.0
    create_burst: int = 100
    curve_dir: str = ""
    warm: bool = True  # fork task processes from a pre-imported zygote (runner.forkserver)
    # The task sandbox (runner/sandbox.py, docs/security.md): "uid", "landlock" or "off"
    # (METASTREAM_SANDBOX=auto, the default, is "uid" for root and "landlock" otherwise).
    sandbox: str = "off"
    sandbox_uid_base: int = 200_000
    sandbox_uid_count: int = 10_000
    task_nofile: int = 1024
    task_nproc: int = 512  # per task uid ("uid" mode only: otherwise it counts the whole user)
    task_address_space_mb: int = 16_384
    task_cpu_seconds: int = 0  # 0: no CPU-time limit
    test_hooks: bool = False  # METASTREAM_TEST_HOOKS: tests may run code in task processes

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def events_dir(self) -> Path:
        """Per-task event log files (embedded SQLite only)."""
        return self.data_dir / "events"

    @property
    def tasks_dir(self) -> Path:
        return self.home / "tasks"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return run_dir_for(self.home)

    @property
    def sandbox_tmp_dir(self) -> Path:
        """Parent of the task processes' private temporary directories."""
        return self.home / "tmp"

    def task_dir(self, task_id: str) -> Path:
        return self.tasks_dir / task_id

    def ensure_dirs(self) -> None:
        """Create the state directories, private to this user (0700), files 0600 (umask).

        A task with a uid of its own reaches its own directories through its mount namespace
        (runner/sandbox.py), so nothing here needs to be open to other users.
        """
        os.umask(0o077)
        for d in (
            self.home,
            self.data_dir,
            self.events_dir,
            self.tasks_dir,
            self.sandbox_tmp_dir,
            self.logs_dir,
        ):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)


DISCONNECT_POLICIES = ("continue", "kill", "grace")
# Server secrets: never passed to task processes, never logged.
SECRET_ENV = (
    "METASTREAM_API_TOKEN",
    "METASTREAM_TICKET_SECRET",
    "METASTREAM_API_TOKEN_FILE",
    "METASTREAM_BUS_SECRET",
)
SANDBOX_MODES = ("auto", "uid", "landlock", "off")


def sandbox_mode(value: str, euid: int | None = None) -> str:
    """The sandbox mode a METASTREAM_SANDBOX value means on this machine."""
    value = value.strip().lower() or "auto"
    if value not in SANDBOX_MODES:
        raise ValueError(f"METASTREAM_SANDBOX must be one of {SANDBOX_MODES}, got {value!r}")
    if value != "auto":
        return value
    return "uid" if (os.geteuid() if euid is None else euid) == 0 else "landlock"


def run_dir_for(home: Path) -> Path:
    """Directory of the stack's ipc sockets."""
    candidate = home / "run"
    if len(str(candidate / "control.sock")) <= _MAX_IPC_PATH:
        return candidate
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"metastream-{os.getuid()}-{digest}"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment (or the given mapping)."""
    env = _Env(os.environ if environ is None else environ)
    policy = env.text("METASTREAM_DISCONNECT_POLICY", "continue")
    if policy not in DISCONNECT_POLICIES:
        raise ValueError(f"METASTREAM_DISCONNECT_POLICY must be one of {DISCONNECT_POLICIES}")
    home = Path(env.text("METASTREAM_HOME", "var")).resolve()
    run = run_dir_for(home)
    return Settings(
        home=home,
        host=env.text("HOST", "127.0.0.1"),
        port=env.integer("PORT", 8000),
        db_url=env.text("METASTREAM_DB_URL", f"sqlite:///{home / 'data' / 'metastream.db'}"),
        bus_pub=env.text("METASTREAM_BUS_PUB", f"ipc://{run / 'bus-in.sock'}"),
        bus_sub=env.text("METASTREAM_BUS_SUB", f"ipc://{run / 'bus-out.sock'}"),
        control=env.text("METASTREAM_CONTROL", f"ipc://{run / 'control.sock'}"),
        python=env.text("METASTREAM_TASK_PYTHON", sys.executable),
        max_running=env.integer("METASTREAM_MAX_RUNNING", 4),
        heartbeat_interval=env.number("METASTREAM_HEARTBEAT_INTERVAL", 1.0),
        heartbeat_timeout=env.number("METASTREAM_HEARTBEAT_TIMEOUT", 5.0),
        stop_ask_timeout=env.number("METASTREAM_STOP_ASK_TIMEOUT", 2.0),
        stop_term_timeout=env.number("METASTREAM_STOP_TERM_TIMEOUT", 3.0),
        control_timeout=env.number("METASTREAM_CONTROL_TIMEOUT", 5.0),
        ws_queue_size=env.integer("METASTREAM_WS_QUEUE", 16),
        ws_heartbeat_interval=env.number("METASTREAM_WS_HEARTBEAT", 15.0),
        ws_ping_interval=env.number("METASTREAM_WS_PING_INTERVAL", 20.0),
        ws_ping_timeout=env.number("METASTREAM_WS_PING_TIMEOUT", 20.0),
        replay_page=env.integer("METASTREAM_REPLAY_PAGE", 2000),
        disconnect_policy=policy,
        disconnect_grace=env.number("METASTREAM_DISCONNECT_GRACE", 30.0),
        lease_ttl=env.number("METASTREAM_LEASE_TTL", 3.0),
        task_timeout=env.number("METASTREAM_TASK_TIMEOUT", 0.0),
        task_memory_mb=env.number("METASTREAM_TASK_MEMORY_MB", 0.0),
        ws_max_per_task=env.integer("METASTREAM_WS_MAX_PER_TASK", 100),
        api_tokens=Secrets(env.items("METASTREAM_API_TOKEN")),
        ticket_secret=Secrets(env.items("METASTREAM_TICKET_SECRET")),
        ticket_ttl=env.number("METASTREAM_TICKET_TTL", 60.0),
        insecure=env.flag("METASTREAM_INSECURE"),
        allowed_origins=env.items("METASTREAM_ALLOWED_ORIGINS"),
        max_body_bytes=env.integer("METASTREAM_MAX_BODY_BYTES", 1_048_576),
        max_json_depth=env.integer("METASTREAM_MAX_JSON_DEPTH", 32),
        max_requirement=env.integer("METASTREAM_MAX_REQUIREMENT", 20_000),
        ws_max_message_bytes=env.integer("METASTREAM_WS_MAX_MESSAGE_BYTES", 65_536),
        ws_max_per_client=env.integer("METASTREAM_WS_MAX_PER_CLIENT", 256),
        create_rate=env.number("METASTREAM_CREATE_RATE", 10.0),
        create_burst=env.integer("METASTREAM_CREATE_BURST", 100),
        curve_dir=env.text("METASTREAM_CURVE_DIR", ""),
        warm=env.text("METASTREAM_WARM", "1").strip().lower() not in ("0", "false", "no", "off"),
        sandbox=sandbox_mode(env.text("METASTREAM_SANDBOX", "auto")),
        sandbox_uid_base=env.integer("METASTREAM_SANDBOX_UID_BASE", 200_000),
        sandbox_uid_count=env.integer("METASTREAM_SANDBOX_UID_COUNT", 10_000),
        task_nofile=env.integer("METASTREAM_TASK_NOFILE", 1024),
        task_nproc=env.integer("METASTREAM_TASK_NPROC", 512),
        task_address_space_mb=env.integer("METASTREAM_TASK_ADDRESS_SPACE_MB", 16_384),
        task_cpu_seconds=env.integer("METASTREAM_TASK_CPU_SECONDS", 0),
        test_hooks=env.flag("METASTREAM_TEST_HOOKS"),
    )


def gateway_port(cfg: Settings) -> int:
    """The port the gateway should listen on, seeing through honcho's PORT rewriting.

    honcho gives every Procfile process its own PORT (base + 100 per process, base 5000 when
    the user set none). The user's own PORT, if any, is still in honcho's environment, so when
    honcho started us we take it from there, defaulting to 8000 as the contract says.
    """
    import psutil

    try:
        ancestor = psutil.Process().parent()
        for _ in range(3):  # honcho -> sh -c -> python
            if ancestor is None:
                break
            if any(part.endswith("honcho") for part in ancestor.cmdline()[:2]):
                return int(ancestor.environ().get("PORT") or 8000)
            ancestor = ancestor.parent()
    except (psutil.Error, ValueError):
        pass
    return cfg.port
