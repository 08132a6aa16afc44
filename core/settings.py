"""Configuration from the environment, shared by every process of one stack.

All runtime state lives under ``METASTREAM_HOME`` (default ``./var``) so that two stacks with
different homes and ports can run side by side without touching each other.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

import msgspec

from core.options import DisconnectMode

LogFormat = Literal["plain", "json"]

# Unix socket paths are limited to ~107 bytes; longer homes get their sockets in a private
# directory under the system temp dir, named after the home so every process agrees on it.
_MAX_IPC_PATH = 100


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


def env(name: str, doc: str, *, shown: str = "", **constraints: Any) -> msgspec.Meta:
    """A setting's declaration: its variable, its doc (the README's table) and its bounds.

    ``shown`` is the default as the README writes it, when the value is derived at load time.
    """
    return msgspec.Meta(**constraints, extra={"env": name, "doc": doc, "shown": shown})


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved configuration of one metastream stack: each setting declared once, here.

    The README's configuration table is generated from these declarations
    (``python -m core.settings_table``) and tests/core/test_settings.py checks that it matches.
    """

    home: Annotated[
        Path,
        env(
            "METASTREAM_HOME",
            "all runtime state: `data/` (SQLite), `run/` (ipc sockets, mode 0700), "
            "`tasks/<id>/` (workspaces), `logs/`",
            shown="./var",
        ),
    ]
    host: Annotated[str, env("HOST", "where the gateway listens")] = "127.0.0.1"
    port: Annotated[
        int,
        env(
            "PORT",
            "the gateway's port, also under `honcho start` (whose own default, 5000, is not taken)",
            ge=0,
            le=65535,
        ),
    ] = 8000
    db_url: Annotated[
        str,
        env(
            "METASTREAM_DB_URL",
            "the store: `sqlite:///PATH` or `postgresql://USER:PASSWORD@HOST:PORT/DB` (see "
            "Running on PostgreSQL)",
            shown="sqlite:///$METASTREAM_HOME/data/metastream.db",
        ),
    ] = ""
    db_migrate: Annotated[
        bool,
        env(
            "METASTREAM_DB_MIGRATE",
            "`1`: gateways and supervisors migrate the store's schema at start-up (under a "
            "lock); `0`: they refuse an unmigrated database, naming `metastream db upgrade`",
        ),
    ] = True
    bus_pub: Annotated[
        str,
        env(
            "METASTREAM_BUS_PUB",
            "proxy XSUB endpoint (publishers connect)",
            shown="ipc://$METASTREAM_HOME/run/bus-in.sock",
        ),
    ] = ""
    bus_sub: Annotated[
        str,
        env(
            "METASTREAM_BUS_SUB",
            "proxy XPUB endpoint (**subscribers connect here**)",
            shown="ipc://$METASTREAM_HOME/run/bus-out.sock",
        ),
    ] = ""
    control: Annotated[
        str,
        env(
            "METASTREAM_CONTROL",
            "supervisor request channel",
            shown="ipc://$METASTREAM_HOME/run/control.sock",
        ),
    ] = ""
    python: Annotated[
        str,
        env(
            "METASTREAM_TASK_PYTHON",
            "interpreter of cold-started task processes",
            shown="the running one",
        ),
    ] = ""
    node: Annotated[
        str,
        env(
            "METASTREAM_NODE",
            "this supervisor's node name (tasks record which node runs them)",
            shown="host name",
        ),
    ] = ""
    max_running: Annotated[
        int, env("METASTREAM_MAX_RUNNING", "tasks running at once; the rest wait as `QUEUED`", ge=1)
    ] = 4
    heartbeat_interval: Annotated[
        float, env("METASTREAM_HEARTBEAT_INTERVAL", "seconds between a task's heartbeats", gt=0)
    ] = 1.0
    heartbeat_timeout: Annotated[
        float,
        env(
            "METASTREAM_HEARTBEAT_TIMEOUT",
            "seconds of silence after which a task is killed and `FAILED`",
            gt=0,
        ),
    ] = 5.0
    node_ttl: Annotated[
        float,
        env(
            "METASTREAM_NODE_TTL",
            "PostgreSQL, several nodes: seconds without a node's heartbeat before another node "
            "fails its running tasks and runs its queued ones",
            gt=0,
        ),
    ] = 15.0
    stop_ask_timeout: Annotated[
        float,
        env(
            "METASTREAM_STOP_ASK_TIMEOUT", "stop sequence: seconds between SIGINT and SIGTERM", ge=0
        ),
    ] = 2.0
    stop_term_timeout: Annotated[
        float,
        env(
            "METASTREAM_STOP_TERM_TIMEOUT",
            "stop sequence: seconds between SIGTERM and SIGKILL",
            ge=0,
        ),
    ] = 3.0
    control_timeout: Annotated[
        float,
        env(
            "METASTREAM_CONTROL_TIMEOUT",
            "seconds a gateway waits for the supervisor (then 503)",
            gt=0,
        ),
    ] = 5.0
    # Small on purpose: a connection that is behind is cheaper to serve from the (shared,
    # cached) log than through the bus; see gateway/logreader.py.
    ws_queue_size: Annotated[
        int,
        env(
            "METASTREAM_WS_QUEUE",
            "live messages buffered per connection before it catches up from the log",
            ge=1,
        ),
    ] = 16
    ws_heartbeat_interval: Annotated[
        float,
        env("METASTREAM_WS_HEARTBEAT", "seconds of silence before a `heartbeat` message", gt=0),
    ] = 15.0
    ws_ping_interval: Annotated[
        float,
        env("METASTREAM_WS_PING_INTERVAL", "seconds between WebSocket pings (dead clients)", gt=0),
    ] = 20.0
    ws_ping_timeout: Annotated[
        float, env("METASTREAM_WS_PING_TIMEOUT", "seconds to wait for a pong", gt=0)
    ] = 20.0
    replay_page: Annotated[
        int, env("METASTREAM_REPLAY_PAGE", "events per page of a log replay", ge=1)
    ] = 2000
    disconnect_policy: Annotated[
        DisconnectMode,
        env(
            "METASTREAM_DISCONNECT_POLICY",
            "server default of the per-task `disconnect_policy` (`continue`, `kill`, `grace`)",
        ),
    ] = "continue"
    disconnect_grace: Annotated[
        float,
        env("METASTREAM_DISCONNECT_GRACE", "server default of the per-task `grace_seconds`", ge=0),
    ] = 30.0
    lease_ttl: Annotated[
        float,
        env(
            "METASTREAM_LEASE_TTL",
            "gateways renew a watch lease per task every third of this; an expired lease "
            "(dead gateway) counts as a disconnect",
            gt=0,
        ),
    ] = 3.0
    task_timeout: Annotated[
        float,
        env(
            "METASTREAM_TASK_TIMEOUT",
            "server default wall-clock limit in seconds (0 = none); per task: `timeout_seconds`",
            ge=0,
        ),
    ] = 0.0
    task_memory_mb: Annotated[
        float,
        env(
            "METASTREAM_TASK_MEMORY_MB",
            "server default memory limit of a task's whole tree in MB (0 = none); per task: "
            "`memory_limit_mb`",
            ge=0,
        ),
    ] = 0.0
    task_max_log_bytes: Annotated[
        int,
        env(
            "METASTREAM_TASK_MAX_LOG_BYTES",
            "bytes of events one task run may log; past it the task ends `FAILED` naming the "
            "limit (0 = none)",
            ge=0,
        ),
    ] = 1 << 30
    ws_max_per_task: Annotated[
        int,
        env(
            "METASTREAM_WS_MAX_PER_TASK",
            "WebSocket connections per task (more: `error` + close `4429`)",
            ge=1,
        ),
    ] = 100
    # With permessage-deflate negotiated, only messages of at least this many bytes are
    # compressed; bench/README.md "Cost curves" has the measurements behind the default.
    ws_deflate_min_bytes: Annotated[
        int,
        env(
            "METASTREAM_WS_DEFLATE_MIN_BYTES",
            "with permessage-deflate negotiated (browsers offer it), only messages this long "
            "or longer are compressed; `0` = all",
            ge=0,
        ),
    ] = 1024
    gateway_workers: Annotated[
        int,
        env(
            "METASTREAM_GATEWAY_WORKERS",
            "gateway processes sharing the port (uvicorn `--workers`; see Gateway workers)",
            ge=1,
        ),
    ] = 1
    # Security and limits (docs/security.md).
    api_tokens: Annotated[
        Secrets,
        env(
            "METASTREAM_API_TOKEN",
            "comma-separated API tokens; when set, REST and WebSocket need one (see Security)",
        ),
    ] = Secrets()
    ticket_secret: Annotated[
        Secrets,
        env(
            "METASTREAM_TICKET_SECRET", "key of WebSocket tickets", shown="derived from the tokens"
        ),
    ] = Secrets()
    ticket_ttl: Annotated[
        float, env("METASTREAM_TICKET_TTL", "lifetime of a WebSocket ticket in seconds", gt=0)
    ] = 60.0
    insecure: Annotated[
        bool,
        env(
            "METASTREAM_INSECURE",
            "`1` (or `python -m gateway --insecure`): listen on a non-loopback address without "
            "a token",
        ),
    ] = False
    allowed_origins: Annotated[
        tuple[str, ...],
        env(
            "METASTREAM_ALLOWED_ORIGINS",
            "extra origins (comma-separated) allowed for WebSocket upgrades and CORS (same "
            "origin always is)",
        ),
    ] = ()
    max_body_bytes: Annotated[
        int, env("METASTREAM_MAX_BODY_BYTES", "request body limit (413)", ge=1)
    ] = 1_048_576
    max_json_depth: Annotated[
        int, env("METASTREAM_MAX_JSON_DEPTH", "request JSON nesting limit (422)", ge=1)
    ] = 32
    max_requirement: Annotated[
        int, env("METASTREAM_MAX_REQUIREMENT", "characters of a requirement (422)", ge=1)
    ] = 20_000
    ws_max_message_bytes: Annotated[
        int,
        env(
            "METASTREAM_WS_MAX_MESSAGE_BYTES", "a client's WebSocket frame limit (close 1009)", ge=1
        ),
    ] = 65_536
    ws_max_per_client: Annotated[
        int,
        env(
            "METASTREAM_WS_MAX_PER_CLIENT", "WebSocket connections per client address (4429)", ge=1
        ),
    ] = 256
    create_rate: Annotated[
        float,
        env(
            "METASTREAM_CREATE_RATE",
            "task creations per second per client address (429 + `Retry-After`; 0 = off)",
            ge=0,
        ),
    ] = 10.0
    create_burst: Annotated[
        int, env("METASTREAM_CREATE_BURST", "burst of task creations per client address", ge=1)
    ] = 100
    allowed_hosts: Annotated[
        tuple[str, ...],
        env(
            "METASTREAM_ALLOWED_HOSTS",
            "`Host` names served besides loopback ones (comma-separated, `*.example.com` for "
            "subdomains; others get `400`: DNS rebinding protection)",
        ),
    ] = ()
    trusted_proxies: Annotated[
        tuple[str, ...],
        env(
            "METASTREAM_TRUSTED_PROXIES",
            "proxies whose `X-Forwarded-For` is believed (comma-separated; default none)",
        ),
    ] = ()
    head_timeout: Annotated[
        float,
        env(
            "METASTREAM_HEAD_TIMEOUT",
            "seconds a request head may take to arrive, else `408` and close (slowloris; 0 = off)",
            ge=0,
        ),
    ] = 5.0
    curve_dir: Annotated[
        str,
        env(
            "METASTREAM_CURVE_DIR",
            "CURVE keys (`python -m bus.curve keygen DIR`); required for non-loopback `tcp://` "
            "bus endpoints",
        ),
    ] = ""
    warm: Annotated[
        bool,
        env(
            "METASTREAM_WARM",
            "fork task processes from a pre-imported zygote (warm path); `0` = a fresh "
            "interpreter per task",
        ),
    ] = True
    warm_metagpt: Annotated[
        bool,
        env("METASTREAM_WARM_METAGPT", "the zygote pre-imports MetaGPT too (read by the zygote)"),
    ] = True
    llm_base_url: Annotated[
        str,
        env(
            "METASTREAM_LLM_BASE_URL",
            "a real OpenAI-compatible LLM, see [Use a real LLM](#use-a-real-llm); "
            "unset = the built-in offline scripted LLM",
        ),
    ] = ""
    llm_api_key: Annotated[str, env("METASTREAM_LLM_API_KEY", "that LLM's API key")] = ""
    llm_timeout: Annotated[
        float,
        env(
            "METASTREAM_LLM_TIMEOUT",
            "read timeout of one LLM call in seconds (between streamed chunks); connecting "
            "has `METASTREAM_LLM_CONNECT_TIMEOUT`",
            gt=0,
        ),
    ] = 60.0
    llm_connect_timeout: Annotated[
        float,
        env("METASTREAM_LLM_CONNECT_TIMEOUT", "connect timeout of LLM calls in seconds", gt=0),
    ] = 5.0
    llm_stall_timeout: Annotated[
        float,
        env(
            "METASTREAM_LLM_STALL_TIMEOUT",
            "a task whose LLM makes no progress (no call started, no text streamed, no call "
            'finished) for this many seconds ends `FAILED` "LLM stalled" (0 = never)',
            ge=0,
        ),
    ] = 180.0
    llm_model: Annotated[str, env("METASTREAM_LLM_MODEL", "that LLM's model name")] = ""
    # The task sandbox (runner/sandbox.py, docs/security.md).
    sandbox: Annotated[
        Literal["auto", "uid", "landlock", "off"],
        env(
            "METASTREAM_SANDBOX",
            "task sandbox: `uid` (a uid per task; needs root), `landlock`, `off`; `auto` = "
            "`uid` as root, else `landlock` (see Security model)",
        ),
    ] = "auto"
    sandbox_uid_base: Annotated[
        int,
        env(
            "METASTREAM_SANDBOX_UID_BASE", "first uid (and gid) given to tasks in `uid` mode", ge=1
        ),
    ] = 200_000
    sandbox_uid_count: Annotated[
        int, env("METASTREAM_SANDBOX_UID_COUNT", "how many uids `uid` mode may use", ge=1)
    ] = 10_000
    task_nofile: Annotated[
        int, env("METASTREAM_TASK_NOFILE", "a task's open files (RLIMIT_NOFILE)", ge=16)
    ] = 1024
    task_nproc: Annotated[
        int,
        env(
            "METASTREAM_TASK_NPROC",
            "a task's processes (RLIMIT_NPROC; `uid` mode only, else it counts the whole user)",
            ge=1,
        ),
    ] = 512
    task_address_space_mb: Annotated[
        int,
        env(
            "METASTREAM_TASK_ADDRESS_SPACE_MB",
            "a task's address space in MB (RLIMIT_AS; MetaGPT reserves a few GB; 0 = none)",
            ge=0,
        ),
    ] = 16_384
    task_cpu_seconds: Annotated[
        int,
        env("METASTREAM_TASK_CPU_SECONDS", "a task's CPU seconds (RLIMIT_CPU; 0 = none)", ge=0),
    ] = 0
    test_hooks: Annotated[
        bool,
        env(
            "METASTREAM_TEST_HOOKS",
            "`1` lets a synthetic task run `run_python` code in its process: **tests only**",
        ),
    ] = False
    api_token_file: Annotated[
        str,
        env(
            "METASTREAM_API_TOKEN_FILE",
            "a file of API tokens (comma- or line-separated), added to `METASTREAM_API_TOKEN`; "
            "keeps them out of the environment",
        ),
    ] = ""
    metagpt_log_level: Annotated[
        str,
        env(
            "METASTREAM_METAGPT_LOG_LEVEL",
            "level of MetaGPT's own (loguru) log in task logs (read by runner/metagpt_flow)",
        ),
    ] = "WARNING"
    # Operating (README "Operating metastream"): Prometheus metrics and the log format.
    metrics: Annotated[
        bool, env("METASTREAM_METRICS", "`0`: no `/metrics`, no metrics servers, nothing counted")
    ] = True
    metrics_host: Annotated[
        str, env("METASTREAM_METRICS_HOST", "where the supervisor's and the bus's metrics listen")
    ] = "127.0.0.1"
    # 0 = no server. Off by default: two stacks side by side (and tests) would clash on fixed
    # ports; an operator picks them (e.g. 9101, 9102).
    supervisor_metrics_port: Annotated[
        int,
        env("METASTREAM_SUPERVISOR_METRICS_PORT", "supervisor's metrics port (`0` = off)", ge=0),
    ] = 0
    bus_metrics_port: Annotated[
        int, env("METASTREAM_BUS_METRICS_PORT", "bus proxy's metrics port (`0` = off)", ge=0)
    ] = 0
    access_log: Annotated[
        bool, env("METASTREAM_ACCESS_LOG", "`1`: the gateway logs one line per HTTP request")
    ] = False
    log_format: Annotated[
        LogFormat, env("METASTREAM_LOG_FORMAT", "`plain` or `json` (one object per line)")
    ] = "plain"

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

    @property
    def sandbox_mode(self) -> str:
        """The sandbox in force: ``auto`` resolved for this process's uid."""
        if self.sandbox != "auto":
            return self.sandbox
        return "uid" if os.geteuid() == 0 else "landlock"

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


DISCONNECT_POLICIES: tuple[str, ...] = get_args(DisconnectMode)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)


def run_dir_for(home: Path) -> Path:
    """Directory of the stack's ipc sockets."""
    candidate = home / "run"
    if len(str(candidate / "control.sock")) <= _MAX_IPC_PATH:
        return candidate
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"metastream-{os.getuid()}-{digest}"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def declarations() -> list[tuple[str, Any, dict[str, str], Any]]:
    """Each setting as ``(field, type, {"env", "doc", "shown"}, default)``, in order."""
    hints = get_type_hints(Settings, include_extras=True)
    out = []
    for f in msgspec.structs.fields(Settings):
        hint = hints[f.name]
        meta = next(m for m in get_args(hint)[1:] if isinstance(m, msgspec.Meta))
        out.append((f.name, hint, dict(meta.extra or {}), f.default))
    return out


def _parse(name: str, hint: Any, raw: str) -> Any:
    base = get_args(hint)[0]
    if base is Secrets:
        return Secrets(_items(raw))
    if base == tuple[str, ...]:
        return _items(raw)
    if base is Path:
        return Path(raw).resolve()
    if base is bool:
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(f"{name} must be one of {_TRUE + _FALSE}, got {raw!r}")
    try:
        return msgspec.convert(raw, hint, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{name}: {exc}, got {raw!r}") from None


def _items(raw: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment (or the given mapping); a bad value names its variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, hint, meta, _default in declarations():
        raw = environ.get(meta["env"], "")
        if raw.strip():  # unset or empty: the declared default
            values[name] = _parse(meta["env"], hint, raw)
    home = values.setdefault("home", Path("var").resolve())
    run = run_dir_for(home)
    # Derived defaults: from the home, the interpreter and the machine.
    values.setdefault("db_url", f"sqlite:///{home / 'data' / 'metastream.db'}")
    values.setdefault("bus_pub", f"ipc://{run / 'bus-in.sock'}")
    values.setdefault("bus_sub", f"ipc://{run / 'bus-out.sock'}")
    values.setdefault("control", f"ipc://{run / 'control.sock'}")
    values.setdefault("python", sys.executable)
    values.setdefault("node", socket.gethostname())
    token_file = values.get("api_token_file")
    if token_file:
        try:
            text = Path(token_file).read_text()
        except OSError as exc:
            raise ValueError(f"METASTREAM_API_TOKEN_FILE: cannot read {token_file}: {exc}") from exc
        from_file = _items(text.replace("\n", ","))
        values["api_tokens"] = Secrets(values.get("api_tokens", Secrets()).values + from_file)
    return Settings(**values)


# Server secrets (the settings of type Secrets): never passed to task processes, never logged.
SECRET_ENV = tuple(
    meta["env"] for _n, hint, meta, _d in declarations() if get_args(hint)[0] is Secrets
)


# Set by the supervisor for one task process, never by users: its own bus key, the proxy's
# public key, its sandbox plan, its spec file (runner/sandbox.py, runner/task/spec.py).
INTERNAL_ENV = (
    "METASTREAM_BUS_SECRET",
    "METASTREAM_BUS_SERVER_KEY",
    "METASTREAM_SANDBOX_PLAN",
    "METASTREAM_TASK_SPEC",
)


# Where honcho runs the gateway (kept importable from here).
from core.honcho import gateway_port as gateway_port  # noqa: E402
