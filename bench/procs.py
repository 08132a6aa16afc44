"""Processes the suite starts: baseline servers, the bus proxy, stacks. All stopped in finally."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil

from core import settings
from metastream.stack import Stack, free_port


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own group: stop() reaches whatever it started
        )


def stop(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL the whole group if it does not go."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)


def wait_port(port: int, p: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class Baseline:
    """One baseline server process (see bench/servers.py)."""

    def __init__(self, kind: str, home: Path, bus_sub: str = "") -> None:
        self.kind = kind
        self.port = free_port()
        argv = [sys.executable, "-m", "bench.servers", kind, "--port", str(self.port)]
        if bus_sub:
            argv += ["--bus-sub", bus_sub]
        self.proc = spawn(argv, home / "logs" / f"baseline-{kind}.log")
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            stop(self.proc)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ws(self, name: str, **query: Any) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{name}?{urlencode(query)}"

    def go(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/go", timeout=10).raise_for_status()


@contextlib.contextmanager
def baseline(kind: str, home: Path) -> Iterator[Baseline]:
    b = Baseline(kind, home)
    try:
        yield b
    finally:
        stop(b.proc)


@contextlib.contextmanager
def bus_baseline(home: Path) -> Iterator[tuple[Baseline, str]]:
    """A plain XSUB/XPUB proxy (``zmq.proxy``, no sender checks: the stack's proxy checks
    every frame's CURVE key) plus the raw forwarder; yields (server, pub EP)."""
    env = {"METASTREAM_HOME": str(home)}
    cfg = settings.load(env)
    cfg.ensure_dirs()
    plain = f"from bus.proxy import serve; serve({cfg.bus_pub!r}, {cfg.bus_sub!r})"
    proxy = spawn([sys.executable, "-c", plain], home / "logs" / "baseline-proxy.log", env)
    try:
        time.sleep(0.3)
        if proxy.poll() is not None:
            raise RuntimeError("bus proxy exited at start")
        b = Baseline("bus", home, bus_sub=cfg.bus_sub)
        try:
            yield b, cfg.bus_pub
        finally:
            stop(b.proc)
    finally:
        stop(proxy)


@contextlib.contextmanager
def stack(home: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    st = Stack(home, env=env)
    try:
        st.start(60)
        if (env or {}).get("METASTREAM_WARM", "1") != "0":
            # The warm path is what is measured: wait until the fork server has imported.
            deadline = time.monotonic() + 120
            while "fork server ready" not in st.log("supervisor"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the fork server did not get ready within 120 s")
                time.sleep(0.1)
        yield st
    finally:
        st.stop()


def publisher(home: Path, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    import json

    argv = [sys.executable, "-m", "bench.servers", "publish", json.dumps(spec)]
    return spawn(argv, home / "logs" / "baseline-publisher.log")


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (those still alive)."""
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
