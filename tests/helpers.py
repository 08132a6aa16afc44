"""Test helpers: polling instead of sleeping, REST shortcuts, a WebSocket collector."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
import websockets

from metastream import ws_resume

T = TypeVar("T")

# Runs a test against one gateway process and against two gateway workers on one port (the
# ``workers`` fixture in conftest.py, which the stack fixtures read).
WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["1gw", "2workers"], indirect=True)


# The seed's WebSocket message fields (shared/seed, CONTRACT.md), written here once and apart
# from the code on purpose: the tests hold the code to the contract.
SEED_EVENT_KEYS = {"event_id", "task_id", "timestamp", "agent_role", "event_type", "payload"}
SEED_STATE_KEYS = {
    "task_id",
    "status",
    "progress",
    "current_agent",
    "last_message",
    "started_at",
    "completed_at",
}


def poll_for(fn: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or fn}")
        time.sleep(interval)
        value = fn()
    return value


def create_task(api: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("requirement", "synthetic test task")
    r = api.post("/api/tasks", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(api: httpx.Client, task_id: str, statuses: set[str], timeout: float = 30) -> dict:
    def check() -> dict | None:
        t = api.get(f"/api/tasks/{task_id}").json()
        return t if t["status"] in statuses else None

    return poll_for(check, timeout, what=f"task {task_id} in {statuses}")


# The opt-in frame formats (gateway/frames.py), by the subprotocol that asks for each.
SUBPROTOCOLS = {
    "json": None,
    "batch": "metastream.batch.v1",
    "msgpack": "metastream.msgpack.v1",
    "msgpack-batch": "metastream.msgpack.batch.v1",
}


def decode_frame(raw: str | bytes, fmt: str) -> list[dict[str, Any]]:
    """The seed messages ``{"type", "data"}`` in one frame of format ``fmt``.

    Written apart from the client library on purpose: the tests check the wire format.
    """
    if fmt in ("json", "batch"):
        assert isinstance(raw, str), f"{fmt}: expected a text frame, got {type(raw).__name__}"
        msg = json.loads(raw)
        if fmt == "json":
            assert isinstance(msg, dict), raw[:200]
            return [msg]
        assert isinstance(msg, list) and msg, raw[:200]
        return msg
    assert isinstance(raw, bytes), f"{fmt}: expected a binary frame, got {type(raw).__name__}"
    obj = msgspec.msgpack.decode(raw)
    maps = obj if fmt == "msgpack-batch" else [obj]
    assert isinstance(maps, list) and maps and all(isinstance(m, dict) for m in maps), obj
    out = []
    for m in maps:
        kind = m.pop("kind")
        if kind == "state":  # the bus's extras may ride along; the seed's fields are the rest
            m.pop("last_event_id", None)
            m.pop("version", None)
        out.append({"type": kind, "data": m})
    return out


@dataclass
class Received:
    """Everything one WebSocket client got."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    frames: int = 0  # WebSocket messages received (fewer than ``messages`` when batched)
    subprotocol: str | None = None  # what the server chose in the handshake (last connection)

    def of(self, msg_type: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == msg_type]

    @property
    def event_ids(self) -> list[int]:
        return [d["event_id"] for d in self.of("event")]


async def collect(
    ws_url: str,
    task_id: str,
    last_event_id: int | None = None,
    timeout: float = 60,
    stop_after_events: int | None = None,
    delay: float = 0.0,
    delay_every: int = 1,
    fmt: str = "json",
) -> Received:
    """Read a task's stream until the server closes (or ``stop_after_events`` events).

    ``fmt`` names the frame format to ask for by subprotocol (see ``SUBPROTOCOLS``).
    """
    url = f"{ws_url}/ws/tasks/{task_id}"
    if last_event_id is not None:
        url += f"?last_event_id={last_event_id}"
    got = Received()
    async with asyncio.timeout(timeout):
        async with _connect(url, fmt) as ws:
            got.subprotocol = ws.subprotocol
            try:
                async for raw in ws:
                    got.frames += 1
                    for msg in decode_frame(raw, fmt):
                        got.messages.append(msg)
                        if delay and len(got.messages) % delay_every == 0:
                            await asyncio.sleep(delay)
                    if stop_after_events is not None and len(got.event_ids) >= stop_after_events:
                        break
            except websockets.ConnectionClosed:
                pass
            got.close_code = ws.close_code
    return got


def _connect(url: str, fmt: str, **kw: Any) -> Any:
    sub = SUBPROTOCOLS[fmt]
    return websockets.connect(
        url,
        max_size=None,
        ping_interval=None,
        subprotocols=[websockets.Subprotocol(sub)] if sub else None,
        **kw,
    )


async def follow(
    ws_url: str,
    task_id: str,
    timeout: float = 120,
    drop_every: int | None = None,
    on_events: Callable[[int], None] | None = None,
    fmt: str = "json",
) -> Received:
    """Follow a task to its end like a resilient client: reconnect with ``last_event_id``.

    Built from the client library's resume parts (``metastream.ws_resume``), but it keeps
    every message as it came, repeats included, so that the tests see what the server sent.
    ``drop_every`` makes the client hang up on purpose after that many events per connection;
    lost connections (a gateway restart) are retried with a short backoff until ``timeout``.
    """
    got = Received()
    cursor = ws_resume.Cursor()
    sub = SUBPROTOCOLS[fmt]
    async with asyncio.timeout(timeout):
        while True:
            url = ws_resume.resume_url(ws_url, task_id, cursor.last)
            try:
                async with ws_resume.connect(
                    url, (sub,) if sub else (), 5, ping_interval=None
                ) as ws:
                    got.subprotocol = ws.subprotocol
                    in_this = 0
                    async for messages in ws_resume.frames(ws, timeout):
                        got.frames += 1
                        for msg in messages:
                            if drop_every is not None and in_this >= drop_every:
                                break  # hang up mid-frame: the rest comes again on resume
                            got.messages.append(msg)
                            if msg["type"] == "event":
                                cursor.last = msg["data"]["event_id"]
                                in_this += 1
                                if on_events is not None:
                                    on_events(cursor.last)
                        if drop_every is not None and in_this >= drop_every:
                            break
            except websockets.ConnectionClosedOK as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1000:
                    got.close_code = 1000
                    return got
                await asyncio.sleep(0.2)
            except ws_resume.RETRYABLE as exc:
                ws_resume.retry_reason(exc)  # raises where retrying is futile (4404, 4401, 4xx)
                await asyncio.sleep(0.2)


def log_events(api: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    """Every persisted event of a task, paging through the REST log."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        body = api.get(f"/api/tasks/{task_id}/events", params={"after": after, "limit": 10000})
        page = body.json()
        out += page["events"]
        after = page["next_after"]
        if not page["has_more"]:
            return out
