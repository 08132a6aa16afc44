"""Who sent a bus frame: per-task CURVE keys derived from one master secret.

Every publisher is a CURVE client of the proxy (on ipc too), so each frame arrives with its
sender's public key (``User-Id``). A task's key pair is not registered anywhere: its secret
key is ``z85(HMAC-SHA256(master, task_id))`` and the proxy recomputes the public half from the
topic's task id. The supervisor hands a task only its own secret; the master stays in
``<METASTREAM_HOME>/keys`` (0700, unreachable to tasks). Trusted components (supervisor,
gateway) derive one shared trusted key; the proxy's server key is derived too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path

import zmq
from zmq.utils import z85

MASTER_FILE = "bus.master"
TASK_SECRET_ENV = "METASTREAM_BUS_SECRET"  # a task's own secret key (z85), set by the supervisor
SERVER_KEY_ENV = "METASTREAM_BUS_SERVER_KEY"  # the proxy's public key (z85)
_TRUSTED = "_sys/trusted"
_SERVER = "_sys/server"
_CONTROL = "_sys/control"
CONTROL_DOMAIN = "control"


class BusKeys:
    """A CURVE client's key pair plus the server's public key (all z85 bytes)."""

    __slots__ = ("public", "secret", "server")

    def __init__(self, secret: bytes, server: bytes) -> None:
        self.secret = secret
        self.public = zmq.curve_public(secret)
        self.server = server


def keys_dir(home: Path) -> Path:
    return home / "keys"


def load_master(home: Path) -> bytes:
    """The master secret, created on first use (0600 in a 0700 directory)."""
    directory = keys_dir(home)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / MASTER_FILE
    with contextlib.suppress(FileExistsError):
        # O_EXCL: of the components starting together, one creates it, the others read it.
        tmp = directory / f".{MASTER_FILE}.{os.getpid()}"
        tmp.write_bytes(secrets.token_hex(32).encode())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()
    value = path.read_bytes().strip()
    if len(value) < 32:
        raise ValueError(f"{path} is too short to be a bus master secret")
    return value


def derive_secret(master: bytes, name: str) -> bytes:
    """The z85 CURVE secret key of ``name`` (a task id, or a trusted role)."""
    return z85.encode(hmac.new(master, name.encode(), hashlib.sha256).digest())


def task_keys(master: bytes, task_id: str) -> BusKeys:
    return BusKeys(derive_secret(master, task_id), server_public(master))


def trusted_keys(master: bytes) -> BusKeys:
    return BusKeys(derive_secret(master, _TRUSTED), server_public(master))


def server_secret(master: bytes) -> bytes:
    return derive_secret(master, _SERVER)


def server_public(master: bytes) -> bytes:
    return zmq.curve_public(server_secret(master))


def control_server_secret(master: bytes) -> bytes:
    """The supervisor's control-channel server key (a CURVE server; trusted clients only)."""
    return derive_secret(master, _CONTROL)


def control_client_keys(master: bytes) -> BusKeys:
    """A trusted client (gateway) of the control channel."""
    return BusKeys(derive_secret(master, _TRUSTED), zmq.curve_public(control_server_secret(master)))


class TrustedOnly:
    """ZAP credentials provider: admits the trusted public key, nobody else."""

    def __init__(self, master: bytes) -> None:
        self._trusted = trusted_keys(master).public

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self._trusted)


def task_env(master: bytes, task_id: str) -> dict[str, str]:
    """What a task process gets: its own secret and the server's public key, nothing else."""
    keys = task_keys(master, task_id)
    return {TASK_SECRET_ENV: keys.secret.decode(), SERVER_KEY_ENV: keys.server.decode()}


def keys_from_env() -> BusKeys | None:
    """A task process's keys (see :func:`task_env`), if it has them."""
    secret = os.environ.get(TASK_SECRET_ENV)
    server = os.environ.get(SERVER_KEY_ENV)
    if not secret or not server:
        return None
    return BusKeys(secret.encode(), server.encode())


class Verifier:
    """The proxy's question: may this key publish on this topic's task?"""

    def __init__(self, master: bytes, cache_size: int = 4096) -> None:
        self.trusted = trusted_keys(master).public.decode()

        @lru_cache(maxsize=cache_size)
        def expected(task_id: str) -> str:
            # ~100 us of curve arithmetic: once per task id while it is in the cache.
            return zmq.curve_public(derive_secret(master, task_id)).decode()

        self.expected = expected
