"""Run a whole stack (bus, supervisor, gateway) as real processes: for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

COMPONENTS = {
    "bus": ["-m", "bus"],
    "supervisor": ["-m", "runner"],
    "gateway": ["-m", "gateway"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """One metastream stack under its own home directory and port."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        components: tuple[str, ...] = tuple(COMPONENTS),
    ):
        """``components``: which of bus, supervisor, gateway this home runs (a node of a
        cluster runs no bus of its own, metastream/cluster.py)."""
        self.home = Path(home)
        self.components = components
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "METASTREAM_HOME": str(self.home),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Stack:
        # Private like everything under the home (the components' own umask is 077).
        for d in (self.home, self.home / "logs"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        for name in self.components:
            self.start_component(name)
        if "gateway" in self.components:
            self.wait_healthy(timeout)
        return self

    def start_component(self, name: str) -> None:
        fd = os.open(
            self.home / "logs" / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        log = open(fd, "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            [sys.executable, *COMPONENTS[name]],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_healthy(self, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the gateway answers and reaches the supervisor.

        A correctness bound, not a speed test: three interpreters importing FastAPI, MetaGPT's
        zygote and the store's migrations take ~3 s idle and half a minute on a loaded CI.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {p.returncode}: {self.log(name)[-2000:]}"
                    )
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=2)
                last = r.json()
                if r.status_code == 200 and last.get("supervisor") == "ok":
                    return last
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"stack not healthy after {timeout} s: {last}")

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        p = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        p.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gateway, supervisor, bus in that order: ask (SIGTERM), then SIGKILL."""
        for name in ("gateway", "supervisor", "bus"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
