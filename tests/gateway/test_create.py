"""``POST /api/tasks`` in-process (the app with its lifespan, no other process): its body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core import settings
from gateway.app import create_app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    cfg = settings.load({"METASTREAM_HOME": str(tmp_path), "METASTREAM_CREATE_RATE": "0"})
    # A loopback Host: the gateway refuses others (DNS rebinding protection).
    with TestClient(create_app(cfg), base_url="http://127.0.0.1") as c:
        yield c


def test_unknown_fields_are_refused_by_name(client: TestClient) -> None:
    r = client.post("/api/tasks", json={"requirement": "x", "on_disconnect": "kill", "n_rounds": 3})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert {tuple(e["loc"]) for e in errors} == {("body", "on_disconnect"), ("body", "n_rounds")}
    assert all(e["type"] == "extra_forbidden" for e in errors)
    assert client.get("/api/tasks").json()["total"] == 0  # nothing was created


def test_every_documented_option_is_accepted_and_kept(client: TestClient) -> None:
    body = {
        "requirement": "a snake game",
        "test_mode": True,
        "use_qa": True,
        "n_round": 3,
        "investment": 1.5,
        "disconnect_policy": "grace",
        "grace_seconds": 5,
        "timeout_seconds": 60,
        "memory_limit_mb": 500,
    }
    r = client.post("/api/tasks", json=body)
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["status"] == "PENDING" and task["test_mode"] is True
    given = {k: v for k, v in body.items() if k not in ("requirement", "test_mode")}
    assert {k: task["options"].get(k) for k in given} == given  # (the server adds its own)
    synthetic = client.post("/api/tasks", json={"requirement": "s", "synthetic": {"events": 3}})
    assert synthetic.status_code == 201 and synthetic.json()["options"]["synthetic"]["events"] == 3
