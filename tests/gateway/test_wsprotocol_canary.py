"""Canary: the uvicorn and websockets internals gateway/wsprotocol.py relies on still exist.

An upgrade that renames or removes one fails here, by name, instead of as a hang or garbled
frames under load. Also checks the installed versions are within pyproject's bounds.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import State

from gateway.wsprotocol import INTERNALS, CoalescingWebSocketProtocol

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _protocol() -> CoalescingWebSocketProtocol:
    async def make() -> CoalescingWebSocketProtocol:
        cfg = Config(app="gateway.app:create_app", factory=True, ws=WebSocketsSansIOProtocol)
        cfg.load()
        return CoalescingWebSocketProtocol(config=cfg, server_state=ServerState(), app_state={})

    return asyncio.run(make())


def test_every_internal_attribute_exists() -> None:
    proto = _protocol()
    missing = [f"protocol.{a}" for a in INTERNALS["protocol"] if not hasattr(proto, a)]
    missing += [f"conn.{a}" for a in INTERNALS["conn"] if not hasattr(proto.conn, a)]
    assert not missing, f"uvicorn/websockets internals gone: {missing}"
    assert isinstance(proto.conn.writes, list)  # frames are appended to it as (header, text)
    assert callable(proto.conn.data_to_send) and proto.conn.state is State.CONNECTING
    assert isinstance(proto.writable, asyncio.Event)  # uvicorn's back-pressure flag


def test_the_overridden_hooks_keep_their_shape() -> None:
    base = WebSocketsSansIOProtocol
    assert list(inspect.signature(base.handle_connect).parameters) == ["self", "event"]
    assert "self.scope" in inspect.getsource(base.handle_connect)  # where the extension goes
    assert list(inspect.signature(base.connection_lost).parameters) == ["self", "exc"]


def _bounds(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{name}(\[|>|<|=)", d))
    low = re.search(r">=([\d.]+)", spec)
    high = re.search(r"<([\d.]+)", spec)
    assert low and high, f"{name} must have both bounds in pyproject.toml: {spec}"
    return _v(low.group(1)), _v(high.group(1))


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def test_installed_versions_are_within_the_tested_bounds() -> None:
    for name in ("uvicorn", "websockets"):
        low, high = _bounds(name)
        assert low <= _v(version(name)) < high, f"{name} {version(name)} outside {low}..{high}"
