"""Authentication, Origin checks and input limits, against a real stack (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.datastructures import Headers

from core import settings
from gateway.limits import TokenBuckets, json_depth_exceeds
from gateway.security import Guard
from metastream.stack import Stack, free_port
from tests.helpers import Received, create_task

TOKEN = "tok-ALPHA-7f3c9e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def ws_read(url: str, timeout: float = 30, **kw: Any) -> Received:
    """Everything one WebSocket gets until the server closes it."""
    got = Received()
    async with asyncio.timeout(timeout), websockets.connect(url, ping_interval=None, **kw) as ws:
        try:
            async for raw in ws:
                got.messages.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        got.close_code = ws.close_code
    return got


# --- units -------------------------------------------------------------------------------


def test_tickets_are_bound_to_task_and_time() -> None:
    cfg = settings.load({"METASTREAM_API_TOKEN": TOKEN, "METASTREAM_TICKET_TTL": "30"})
    guard, other = Guard(cfg), Guard(settings.load({"METASTREAM_API_TOKEN": "another"}))
    ticket, ttl = guard.issue_ticket("task-a", now=1000)
    assert ttl == 30 and TOKEN not in ticket
    assert guard.ticket_ok(ticket, "task-a", now=1029)
    assert Guard(cfg).ticket_ok(ticket, "task-a", now=1029)  # another gateway, same token
    assert not guard.ticket_ok(ticket, "task-a", now=1031)  # expired
    assert not guard.ticket_ok(ticket, "task-b", now=1000)  # another task
    assert not other.ticket_ok(ticket, "task-a", now=1000)  # another key
    version, expires, sig = ticket.split(".")
    assert not guard.ticket_ok(f"{version}.{int(expires) + 100}.{sig}", "task-a", now=1000)
    for junk in ("", "v1", "v1..", "v2.1.x", "v1.-5.x", "x" * 500):
        assert not guard.ticket_ok(junk, "task-a", now=0)


def test_bearer_tokens() -> None:
    guard = Guard(settings.load({"METASTREAM_API_TOKEN": f"first, {TOKEN}"}))
    assert guard.token_ok(f"Bearer {TOKEN}") and guard.token_ok("bearer first")
    for bad in (None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        assert not guard.token_ok(bad)


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        (None, "127.0.0.1:8000", True),  # not a browser
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://example.com", "example.com", True),
        ("http://example.com:80", "example.com", True),
        ("http://evil.example", "127.0.0.1:8000", False),
        ("http://127.0.0.1:9000", "127.0.0.1:8000", False),
        ("https://example.com", "example.com:80", False),
        ("null", "127.0.0.1:8000", False),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://app.example:3000", "127.0.0.1:8000", True),  # configured
        ("HTTP://APP.example:3000/", "127.0.0.1:8000", True),
    ],
)
def test_origin_rules(origin: str | None, host: str, ok: bool) -> None:
    guard = Guard(settings.load({"METASTREAM_ALLOWED_ORIGINS": "http://app.example:3000"}))
    raw = {"host": host} | ({"origin": origin} if origin is not None else {})
    assert guard.origin_ok(Headers(raw)) is ok


def test_json_depth_without_parsing() -> None:
    assert not json_depth_exceeds(b'{"a": [[1, 2], {"b": "[[[[[[[["}]}', 3)
    assert json_depth_exceeds(b'{"a": [[1, 2], {"b": [[]]}]}', 3)
    assert not json_depth_exceeds(b'["\\\\", "\\"[[[[", []]', 2)
    assert json_depth_exceeds(b"[" * 100_000, 32)  # malformed but would recurse: refused
    started = time.perf_counter()
    assert not json_depth_exceeds(b"[]" * 500_000, 32)
    assert json_depth_exceeds(b'"\\"' * 100_000 + b"[" * 40, 32)
    # Linear: ~0.1 s here; a backtracking or quadratic scan of these 2 MB would take minutes.
    assert time.perf_counter() - started < 10


def test_token_bucket() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0  # per client
    now[0] = 0.5
    assert buckets.take("a") == 0


# --- a stack with a token ----------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = {
        "METASTREAM_API_TOKEN": f"other-token,{TOKEN}",
        "METASTREAM_TICKET_SECRET": "ticket-secret-for-tests",
        "METASTREAM_ALLOWED_ORIGINS": "http://app.example:3000",
        "METASTREAM_MAX_REQUIREMENT": "100",
        "METASTREAM_MAX_BODY_BYTES": "4096",
        "METASTREAM_CREATE_RATE": "0.01",
        "METASTREAM_CREATE_BURST": "20",
    }
    s = Stack(tmp_path_factory.mktemp("secured"), env=env).start()
    yield s
    s.stop()


def test_rest_needs_a_token(secured: Stack) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as raw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/api/x")):
                r = raw.request(method, path, headers=headers, json={"requirement": "x"})
                assert r.status_code == 401, (method, path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
                assert "Unauthorized" in r.json()["detail"] and TOKEN not in r.text
        assert raw.get("/api/tasks", headers=AUTH).status_code == 200
        health = raw.get("/healthz").json()  # open, but without task ids
        assert health["auth"] is True and "watchers" not in health
        assert health["counters"]["http_unauthorized"] >= 9


def test_websocket_credentials(secured: Stack) -> None:
    with httpx.Client(base_url=secured.url, timeout=30, headers=AUTH) as api:
        task = create_task(api, synthetic={"events": 5})
        other = create_task(api, synthetic={"events": 1})
        ticket = api.post(f"/api/tasks/{task['id']}/ticket").json()
        foreign = api.post(f"/api/tasks/{other['id']}/ticket").json()["ticket"]
        assert ticket["expires_in"] == 60 and TOKEN not in ticket["ticket"]
        assert api.post("/api/tasks/nope/ticket").status_code == 404
    cfg = settings.load({"METASTREAM_TICKET_SECRET": "ticket-secret-for-tests"})
    expired, _ = Guard(cfg).issue_ticket(task["id"], now=time.time() - 120)
    url = f"{secured.ws_url}/ws/tasks/{task['id']}"

    async def scenario() -> tuple[list[Received], Received, Received]:
        rejected = await asyncio.gather(
            ws_read(url),
            ws_read(url, additional_headers={"Authorization": "Bearer wrong"}),
            ws_read(f"{url}?ticket={expired}"),
            ws_read(f"{url}?ticket={foreign}"),
            ws_read(f"{url}?ticket=v1.99999999999.forged"),
            ws_read(f"{secured.ws_url}/ws/tasks/unknown-task"),  # no existence leak either
        )
        by_header = await ws_read(url, additional_headers=AUTH)
        by_ticket = await ws_read(f"{url}?ticket={ticket['ticket']}")
        return list(rejected), by_header, by_ticket

    rejected, by_header, by_ticket = asyncio.run(scenario())
    for got in rejected:
        assert got.close_code == 4401
        assert got.messages == [
            {
                "type": "error",
                "data": {"message": "Unauthorized: a valid API token or ticket is required"},
            }
        ]
    assert by_header.event_ids == by_ticket.event_ids == [1, 2, 3, 4, 5]
    assert by_header.close_code == by_ticket.close_code == 1000


def test_websocket_origin(secured: Stack) -> None:
    with httpx.Client(base_url=secured.url, timeout=30, headers=AUTH) as api:
        task = create_task(api, synthetic={"events": 2})
        preflight = {"Origin": "http://app.example:3000", "Access-Control-Request-Method": "POST"}
        r = api.options("/api/tasks", headers=preflight)
        assert r.headers.get("access-control-allow-origin") == "http://app.example:3000"
        r = api.options("/api/tasks", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    url = f"{secured.ws_url}/ws/tasks/{task['id']}"

    async def scenario() -> list[Received]:
        return list(
            await asyncio.gather(
                ws_read(url, additional_headers=AUTH, origin="http://evil.example"),
                ws_read(url, additional_headers=AUTH, origin=f"http://localhost:{secured.port}"),
                ws_read(url, additional_headers=AUTH, origin=secured.url),
                ws_read(url, additional_headers=AUTH, origin="http://app.example:3000"),
            )
        )

    evil, other_name, same, configured = asyncio.run(scenario())
    for got in (evil, other_name):
        assert got.close_code == 4403
        assert got.of("error") == [{"message": "Origin not allowed (METASTREAM_ALLOWED_ORIGINS)"}]
    assert same.event_ids == configured.event_ids == [1, 2]


def test_limits_name_themselves(secured: Stack) -> None:
    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=secured.url, timeout=30, headers=AUTH) as api:
        r = api.post("/api/tasks", json={"requirement": "x" * 101})
        assert r.status_code == 422 and "METASTREAM_MAX_REQUIREMENT" in r.text
        r = api.post("/api/tasks", content=b"x" * 5000, headers=json_type)
        assert r.status_code == 413 and "METASTREAM_MAX_BODY_BYTES" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit holds while reading
            yield b'{"requirement": "'
            yield b"y" * 5000

        r = api.post("/api/tasks", content=chunks(), headers=json_type)
        assert r.status_code == 413
        # Deep nesting: json.loads would raise RecursionError (a 500) without the check.
        deep = b'{"requirement": "x", "synthetic": ' + b"[" * 1500 + b"]" * 1500 + b"}"
        r = api.post("/api/tasks", content=deep, headers=json_type)
        assert r.status_code == 422 and "METASTREAM_MAX_JSON_DEPTH" in r.text
        assert api.get("/api/tasks", params={"limit": 201}).status_code == 422
        assert api.get("/api/tasks/x/events", params={"limit": 10_001}).status_code == 422


def test_task_creation_rate(stack_factory: Callable[..., Stack]) -> None:
    s = stack_factory(env={"METASTREAM_CREATE_RATE": "0.5", "METASTREAM_CREATE_BURST": "3"})
    with httpx.Client(base_url=s.url, timeout=30) as api:
        codes = [api.post("/api/tasks", json={"requirement": "r"}) for _ in range(5)]
        assert [r.status_code for r in codes] == [201, 201, 201, 429, 429]
        # A token every 2 s: at most 2 s to wait, less if the requests themselves took a while
        # (as on a loaded machine), and at least 1 (whole seconds, rounded up).
        assert 1 <= int(codes[3].headers["retry-after"]) <= 2
        assert "METASTREAM_CREATE_RATE" in codes[3].json()["detail"]
        assert api.get("/api/tasks").status_code == 200  # reads are not limited
        assert api.get("/healthz").json()["counters"]["create_rate_limited"] == 2


def test_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    env = {**os.environ, "METASTREAM_HOME": str(tmp_path), "HOST": "0.0.0.0", "PORT": "1"}
    env.pop("METASTREAM_API_TOKEN", None)
    env.pop("METASTREAM_INSECURE", None)
    gateway = [sys.executable, "-m", "gateway"]
    refused = subprocess.run(gateway, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "--insecure" in refused.stderr
    env["PORT"] = str(free_port())
    with subprocess.Popen(
        [*gateway, "--insecure"], env=env, stderr=subprocess.PIPE, text=True
    ) as insecure:
        try:
            assert insecure.stderr is not None
            line = insecure.stderr.readline()
            assert "INSECURE" in line and "0.0.0.0" in line
        finally:
            insecure.terminate()
            insecure.wait(15)
    env.update(METASTREAM_API_TOKEN=TOKEN, HOST="127.0.0.1", PORT=str(free_port()))
    with subprocess.Popen(gateway, env=env, stderr=subprocess.PIPE, text=True) as secure:
        try:
            assert secure.stderr is not None
            line = secure.stderr.readline()
            assert "auth: ON" in line and TOKEN not in line
        finally:
            secure.terminate()
            secure.wait(15)
