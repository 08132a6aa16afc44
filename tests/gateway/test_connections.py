"""Connection-level behaviour: client heartbeats, dead clients, the per-task limit."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

import httpx

from metastream.stack import Stack
from tests.helpers import collect, create_task, wait_status


def test_idle_connections_get_heartbeats_with_the_last_event_id(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(env={"METASTREAM_WS_HEARTBEAT": "0.5"})
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": 3, "rate": 1})
        got = asyncio.run(collect(s.ws_url, task["id"], timeout=30))
    beats = got.of("heartbeat")
    assert beats, "a quiet task should produce heartbeats"
    assert {b["task_id"] for b in beats} == {task["id"]}
    assert all(0 <= b["last_event_id"] <= 3 for b in beats)
    assert got.event_ids == [1, 2, 3] and got.close_code == 1000


def test_connection_limit_per_task(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(env={"METASTREAM_WS_MAX_PER_TASK": "2"})
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": 200, "rate": 50})

        async def scenario():  # type: ignore[no-untyped-def]
            first = asyncio.create_task(collect(s.ws_url, task["id"], timeout=30))
            second = asyncio.create_task(collect(s.ws_url, task["id"], timeout=30))
            async with asyncio.timeout(10):
                while _count(api, task["id"]) < 2:
                    await asyncio.sleep(0.05)
            third = await collect(s.ws_url, task["id"], timeout=10)
            return await first, await second, third

        first, second, third = asyncio.run(scenario())
    assert third.messages == [
        {"type": "error", "data": {"message": "Too many connections to this task (limit 2)"}}
    ]
    assert third.close_code == 4429
    assert first.event_ids == second.event_ids == list(range(1, 201))


def _count(api: httpx.Client, task_id: str) -> int:
    return int(api.get("/healthz").json().get("watchers", {}).get(task_id, 0))


def test_a_vanished_client_counts_as_a_disconnect(stack_factory) -> None:  # type: ignore[no-untyped-def]
    env = {"METASTREAM_WS_PING_INTERVAL": "0.5", "METASTREAM_WS_PING_TIMEOUT": "0.5"}
    s: Stack = stack_factory(env=env)
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": 10_000, "rate": 20}, disconnect_policy="kill")
        # A raw client that completes the handshake, then never reads or answers a ping,
        # like a browser whose machine lost its network (no FIN ever arrives).
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws/tasks/{task['id']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b"101" in sock.recv(1024)
        started = time.monotonic()
        try:
            final = wait_status(api, task["id"], {"CANCELLED", "COMPLETED", "FAILED"}, 20)
        finally:
            sock.close()
    assert final["status"] == "CANCELLED" and "policy kill" in final["last_message"]
    assert time.monotonic() - started < 10
