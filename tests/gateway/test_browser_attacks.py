"""The browser as an attacker, and clients posing as many (issue 21): raw HTTP and WebSockets.

DNS rebinding: a page on ``evil.example`` whose name now resolves to 127.0.0.1 talks to the
gateway same-origin, so only the ``Host`` header gives it away. Cross-site request forgery: a
page POSTs without a preflight. ``X-Forwarded-For`` from a client that is not a configured
proxy must not change its address.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from core import settings
from gateway.browser import HostPolicy, host_name
from metastream.stack import Stack
from tests.helpers import create_task

EVIL = "evil.example"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default single-user mode: no token, loopback; small limits to reach quickly."""
    env = {
        "METASTREAM_WS_MAX_PER_CLIENT": "3",
        "METASTREAM_CREATE_RATE": "0.01",
        "METASTREAM_CREATE_BURST": "20",
        "METASTREAM_ALLOWED_HOSTS": "metastream.internal,*.lan.example",
    }
    with Stack(Path(tmp_path_factory.mktemp("browser")), env=env) as s:
        yield s


def raw_http(stack: Stack, request: str) -> tuple[int, bytes]:
    """Send one raw HTTP/1.1 request; the status code and the body."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_host_policy_unit() -> None:
    assert host_name("[::1]:8000") == "::1" and host_name("Evil.Example.:80") == "evil.example"
    policy = HostPolicy(settings.load({"METASTREAM_ALLOWED_HOSTS": "a.example,*.b.example"}))
    for ok in (
        "127.0.0.1:8000",
        "localhost",
        "LOCALHOST:1",
        "[::1]:8000",
        "127.9.9.9",
        "x.localhost",
    ):
        assert policy.allows(ok), ok
    for ok in ("a.example:8000", "c.b.example"):
        assert policy.allows(ok), ok
    for bad in (
        None,
        "",
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "b.example",
        "[::2]",
    ):
        assert not policy.allows(bad), bad
    # With a token and no list, any Host (rebinding gets a page nothing without the token).
    assert HostPolicy(settings.load({"METASTREAM_API_TOKEN": "t"})).allows("evil.example")
    # The address the gateway listens on is always allowed.
    assert HostPolicy(settings.load({"HOST": "192.0.2.7", "METASTREAM_INSECURE": "1"})).allows(
        "192.0.2.7:8000"
    )


def test_dns_rebinding_gets_400_on_rest_and_websocket(local: Stack) -> None:
    port = local.port
    with httpx.Client(base_url=local.url, timeout=30) as api:
        task = create_task(api)
        evil = {"Host": f"{EVIL}:{port}", "Origin": f"http://{EVIL}:{port}"}
        r = api.get("/api/tasks", headers=evil)
        assert r.status_code == 400 and "Host" in r.json()["detail"], r.text
        r = api.post("/api/tasks", headers=evil, json={"requirement": "x"})
        assert r.status_code == 400, r.text
        r = api.post(f"/api/tasks/{task['id']}/run", headers=evil)
        assert r.status_code == 400, r.text
        # Allowed: loopback names, configured names and wildcards.
        for host in (
            f"localhost:{port}",
            f"127.0.0.1:{port}",
            "metastream.internal",
            "a.lan.example",
        ):
            assert api.get("/api/tasks", headers={"Host": host}).status_code == 200, host
    status, body = raw_http(
        local, f"GET /api/tasks HTTP/1.1\r\nHost: {EVIL}\r\nConnection: close\r\n\r\n"
    )
    assert status == 400 and b"DNS rebinding" in body
    # HTTP/1.0 without any Host header.
    status, _ = raw_http(local, "GET /api/tasks HTTP/1.0\r\n\r\n")
    assert status == 400

    async def ws() -> int:
        # The name the page used, connected to loopback (as the rebound name resolves).
        url = f"ws://{EVIL}:{port}/ws/tasks/{task['id']}?start=false"
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(
                url, host="127.0.0.1", port=port, origin=f"http://{EVIL}:{port}"
            ):
                pass
        return info.value.response.status_code

    assert asyncio.run(ws()) == 400


def test_cross_site_state_changes_are_refused(local: Stack) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as api:
        task = create_task(api)
        foreign = {"Origin": "http://evil.example"}
        for path in (
            f"/api/tasks/{task['id']}/run",
            f"/api/tasks/{task['id']}/cancel",
            "/api/tasks",
        ):
            r = api.post(path, headers=foreign)
            assert r.status_code == 403 and "Origin not allowed" in r.json()["detail"], (
                path,
                r.text,
            )
        assert (
            api.post(
                "/api/tasks", headers={"Origin": "null"}, json={"requirement": "x"}
            ).status_code
            == 403
        )
        assert api.get(f"/api/tasks/{task['id']}").json()["status"] == "PENDING"  # untouched
        # Same origin (the web view) and no Origin (programs) still work.
        same = {"Origin": local.url}
        assert api.post("/api/tasks", headers=same, json={"requirement": "x"}).status_code == 201
        assert api.get(f"/api/tasks/{task['id']}", headers=foreign).status_code == 200  # reads pass


def test_a_local_client_holding_connections_does_not_lock_out_the_user(local: Stack) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as api:
        task = create_task(api)
    url = f"{local.ws_url}/ws/tasks/{task['id']}?start=false"

    async def scenario() -> list[str]:
        held = [await websockets.connect(url, ping_interval=None) for _ in range(6)]
        try:
            firsts = [json.loads(await ws.recv())["type"] for ws in held]
            async with websockets.connect(url, ping_interval=None) as ws:
                firsts.append(json.loads(await ws.recv())["type"])
            return firsts
        finally:
            for ws in held:
                await ws.close()

    # Twice METASTREAM_WS_MAX_PER_CLIENT and one more: all served in single-user mode.
    assert asyncio.run(scenario()) == ["connected"] * 7


def test_per_address_limits_still_hold_with_a_token(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(
        env={"METASTREAM_API_TOKEN": "tok-1", "METASTREAM_WS_MAX_PER_CLIENT": "2"}
    )
    auth = {"Authorization": "Bearer tok-1"}
    with httpx.Client(base_url=s.url, timeout=30, headers=auth) as api:
        task = create_task(api)
    url = f"{s.ws_url}/ws/tasks/{task['id']}?start=false"

    async def scenario() -> tuple[list[str], int | None]:
        held = [await websockets.connect(url, additional_headers=auth) for _ in range(2)]
        try:
            firsts = [json.loads(await ws.recv())["type"] for ws in held]
            async with websockets.connect(url, additional_headers=auth) as ws:
                firsts.append(json.loads(await ws.recv())["type"])
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                return firsts, ws.close_code
        finally:
            for ws in held:
                await ws.close()

    assert asyncio.run(scenario()) == (["connected", "connected", "error"], 4429)


def test_x_forwarded_for_is_ignored_without_trusted_proxies(local: Stack) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as api:
        codes = [
            api.post(
                "/api/tasks",
                json={"requirement": "x"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            ).status_code
            for i in range(60)
        ]
    # One client, one bucket of 20 (the other tests of this module may have taken some).
    assert codes.count(201) <= 20 and codes.count(429) >= 40, codes
