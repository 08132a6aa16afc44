"""Server secrets stay secret: not in any file of a full run, not in any task process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psutil
import pytest

from metastream.stack import Stack
from store import Store
from tests.gateway.test_security import ws_read
from tests.helpers import create_task, poll_for, wait_status

TOKEN = "tok-e2e-9d1f0b7c5a"
SECRET = "ticket-secret-e2e-4b2a"
LLM_KEY = "sk-llm-e2e-7c3e1a"  # only tasks calling a real LLM get it; no log may show it


def _task_processes(stack: Stack, task_id: str, at_least: int) -> list[psutil.Process]:
    """The task's process and its children, once there are ``at_least`` of them."""
    # By recorded pid: a task forked from the zygote has the zygote's command line.
    row = Store(f"sqlite:///{stack.home / 'data' / 'metastream.db'}").get_task(task_id)
    if row is None or row.pid is None:
        return []
    try:
        leader = psutil.Process(row.pid)
        found = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return found if len(found) >= at_least else []


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_tokens_never_reach_logs_files_or_task_processes(stack_factory, log_format) -> None:  # type: ignore[no-untyped-def]
    env = {
        "METASTREAM_API_TOKEN": f"second-{TOKEN},{TOKEN}",
        "METASTREAM_TICKET_SECRET": SECRET,
        "METASTREAM_LLM_API_KEY": LLM_KEY,
        "METASTREAM_LOG_FORMAT": log_format,
    }
    s: Stack = stack_factory(env=env)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=s.url, timeout=30, headers=auth) as api:
        # A long task with child processes, to read the environments while it runs.
        long = create_task(api, synthetic={"events": 100_000, "rate": 20, "spawn_children": 2})
        api.post(f"/api/tasks/{long['id']}/run").raise_for_status()
        procs = poll_for(
            lambda: _task_processes(s, long["id"], at_least=3),
            20,
            what="the task process and its two children",
        )
        # The supervisor has the secrets in its environment; its task processes must not.
        supervisor_env = Path(f"/proc/{s.procs['supervisor'].pid}/environ").read_bytes()
        assert TOKEN.encode() in supervisor_env and SECRET.encode() in supervisor_env
        for p in procs:
            environ = Path(f"/proc/{p.pid}/environ").read_bytes()
            assert TOKEN.encode() not in environ and SECRET.encode() not in environ
            assert b"METASTREAM_API_TOKEN" not in environ, p.cmdline()
            assert LLM_KEY.encode() not in environ and b"bus.master" not in environ
            assert b"METASTREAM_HOME=" in environ  # it is a real task environment

        # Everything a client does: REST, tickets, both WebSocket credentials, failures.
        short = create_task(api, synthetic={"events": 20})
        ticket = api.post(f"/api/tasks/{short['id']}/ticket").json()["ticket"]
        url = f"{s.ws_url}/ws/tasks/{short['id']}"
        by_ticket = asyncio.run(ws_read(f"{url}?ticket={ticket}"))
        by_header = asyncio.run(ws_read(url, additional_headers=auth))
        assert by_ticket.event_ids == by_header.event_ids == list(range(1, 21))
        bad = asyncio.run(ws_read(url, additional_headers={"Authorization": f"Bearer {TOKEN}0"}))
        assert bad.close_code == 4401
        assert httpx.get(f"{s.url}/api/tasks", headers={"Authorization": TOKEN}).status_code == 401
        api.get(f"/api/tasks/{short['id']}/events").raise_for_status()
        # Metrics are behind the token; readiness (for load balancers) is not.
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        assert "metastream_ws_messages_sent_total" in api.get("/metrics").text
        assert httpx.get(f"{s.url}/readyz").status_code == 200
        api.post(f"/api/tasks/{long['id']}/cancel").raise_for_status()
        wait_status(api, long["id"], {"CANCELLED"})
    s.stop()

    files = [p for p in s.home.rglob("*") if p.is_file()]
    logs = [p for p in files if p.suffix == ".log"]
    assert {p.name for p in logs} >= {"gateway.log", "supervisor.log", "bus.log"}
    assert any(p.name.startswith("task-") for p in logs)
    assert "auth: ON" in s.log("gateway")
    if log_format == "json":  # (the start-up line is a record then)
        assert all(line.startswith("{") for line in s.log("gateway").splitlines() if line)
    assert "ticket=<redacted>" in s.log("gateway")  # uvicorn logged the ticket's URL
    assert ticket not in s.log("gateway")
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data, f"token found in {path}"
        assert SECRET.encode() not in data, f"ticket secret found in {path}"
        if path.suffix == ".log":
            assert LLM_KEY.encode() not in data, f"LLM API key found in {path}"
