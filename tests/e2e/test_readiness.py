"""/readyz takes a gateway out while it cannot serve, and puts it back; /healthz stays cheap."""

from __future__ import annotations

import signal

import httpx
import pytest

from metastream.stack import Stack, free_port
from tests.helpers import create_task, poll_for, wait_status


def _readyz(s: Stack) -> httpx.Response:
    return httpx.get(f"{s.url}/readyz", timeout=10)


def test_not_ready_while_the_bus_proxy_is_down_and_ready_again_after(stack: Stack) -> None:
    ready = poll_for(lambda: _readyz(stack).status_code == 200 and _readyz(stack), 15)
    assert ready.json() == {
        "ready": True,
        "checks": {"store": "ok", "bus": "ok", "supervisor": "ok"},
        "reasons": [],
    }

    stack.kill("bus", signal.SIGKILL)
    down = poll_for(lambda: (r := _readyz(stack)).status_code == 503 and r, 15, what="not ready")
    body = down.json()
    assert body["ready"] is False
    assert body["checks"]["store"] == "ok" and body["checks"]["supervisor"] == "ok"
    assert body["checks"]["bus"].startswith("not connected")
    assert body["reasons"] == [f"bus {body['checks']['bus']}"]
    # Liveness is not readiness: the process is up, a restart would not help.
    assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
    metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert "metastream_gateway_bus_connected 0.0" in metrics

    stack.start_component("bus")
    poll_for(lambda: _readyz(stack).status_code == 200, 20, what="ready again")


def test_not_ready_without_a_supervisor(stack: Stack) -> None:
    poll_for(lambda: _readyz(stack).status_code == 200, 15)
    stack.kill("supervisor", signal.SIGKILL)
    down = poll_for(lambda: (r := _readyz(stack)).status_code == 503 and r, 15)
    assert down.json()["checks"]["supervisor"].startswith("unavailable")
    assert down.json()["checks"]["bus"] == "ok"  # the gateway's own beacon still comes back


def test_metrics_off_serves_no_metrics_and_runs_tasks_all_the_same(stack_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    s: Stack = stack_factory(
        env={"METASTREAM_METRICS": "0", "METASTREAM_SUPERVISOR_METRICS_PORT": str(port)}
    )
    r = httpx.get(f"{s.url}/metrics", timeout=10)
    assert r.status_code == 404 and "METASTREAM_METRICS=0" in r.json()["detail"]
    with httpx.Client(base_url=s.url, timeout=30) as api:
        t = create_task(api, synthetic={"events": 30})
        api.post(f"/api/tasks/{t['id']}/run").raise_for_status()
        wait_status(api, t["id"], {"COMPLETED"})
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
