"""A real, throwaway PostgreSQL server (tests and benchmarks): initdb in a temp dir, a free port.

As root (CI), ``initdb`` refuses to run, so the server runs as the ``postgres`` user (through
``runuser``) in a directory that user owns. Password authentication (scram) over TCP, so that
a wrong password is a real refusal.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

PASSWORD = "pg-test-secret"
USER = "postgres"


def pg_bin() -> Path | None:
    """The directory of ``pg_ctl`` and ``initdb``, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster owned by the test session."""

    def __init__(self, bindir: Path, root: Path | None = None, port: int | None = None) -> None:
        """A throwaway server in a temp dir, or one kept in ``root`` (``make cluster``)."""
        self.bindir = bindir
        self.root = root or Path(tempfile.mkdtemp(prefix="metastream-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *args], check=check, capture_output=True, text=True, timeout=120
        )

    def init(self, fsync: bool = False) -> PgServer:
        """initdb; ``fsync`` off by default (see the note on the config below)."""
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self._as_user:
            entry = pwd.getpwnam("postgres")
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 300\n"
                # fsync off: a commit still reaches the kernel before it returns, so a server
                # crash (pg_ctl stop -m immediate) loses nothing; only an OS crash could.
                f"fsync = {'on' if fsync else 'off'}\nsynchronous_commit = on\n"
                "shared_buffers = 64MB\n"
            )
        return self

    def foreground(self) -> list[str]:
        """The argv that runs the server in the foreground (under honcho)."""
        return [*self._as_user, str(self.bindir / "postgres"), "-D", str(self.data)]

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
