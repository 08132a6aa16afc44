"""Configuration from the environment, shared by every process of one stack.

All runtime state lives under ``METASTREAM_HOME`` (default ``./var``) so that two stacks with
different homes and ports can run side by side without touching each other.

Each setting is declared once, with its type, default, variable and doc, in the module of its
component: ``settings_stack`` (home, store, bus, operating), ``settings_tasks`` (supervisor,
sandbox, LLM), ``settings_gateway`` (serving, security). :class:`Settings` joins them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_type_hints

import msgspec

from core.options import DisconnectMode
from core.settings_base import Secrets as Secrets
from core.settings_gateway import SecuritySettings
from core.settings_stack import LogFormat

# Unix socket paths are limited to ~107 bytes; longer homes get their sockets in a private
# directory under the system temp dir, named after the home so every process agrees on it.
_MAX_IPC_PATH = 100


class Settings(SecuritySettings, frozen=True, kw_only=True):
    """Resolved configuration of one metastream stack: each setting declared once, in its part.

    The parts are a chain of base classes (stack, bus, operating, supervisor, sandbox, LLM,
    gateway, security) because a msgspec Struct takes fields from one line of bases only; the
    order of the chain is the order of the README's table.

    The README's configuration table is generated from these declarations
    (``python -m core.settings_table``) and tests/core/test_settings.py checks that it matches.
    """

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
