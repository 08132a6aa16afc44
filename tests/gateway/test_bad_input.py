"""Wrong answers to bad input (issue 21): each a documented 4xx or close code, never a 500/1006."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway.limits import json_problem
from metastream.stack import Stack
from tests.helpers import create_task, wait_status

BIG = "9" * 5000


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, httpx.Client, str]]:
    with (
        Stack(Path(tmp_path_factory.mktemp("badinput")), env={"METASTREAM_CREATE_RATE": "0"}) as s,
        httpx.Client(base_url=s.url, timeout=30) as api,
    ):
        task = create_task(api, synthetic={"events": 3})
        api.post(f"/api/tasks/{task['id']}/run")
        wait_status(api, task["id"], {"COMPLETED"})
        yield s, api, task["id"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"requirement": "\\ud800"}', "surrogate"),
        ('{"requirement": "x\\udc00y"}', "surrogate"),
        ('{"requirement": "x", "investment": NaN}', "NaN"),
        ('{"requirement": "x", "investment": Infinity}', "Infinity"),
        ('{"requirement": "x", "investment": -Infinity}', "-Infinity"),
        ('{"requirement": "x", "investment": 1e999}', "finite"),
        ('{"requirement": "x", "n_round": ' + BIG + "}", "digits"),
        ('{"requirement": "x", "synthetic": {"events": -' + BIG + "}}", "digits"),
    ],
    ids=["surrogate", "low-surrogate", "nan", "inf", "-inf", "1e999", "5000-digits", "neg-digits"],
)
def test_bad_json_bodies_are_422_naming_the_problem(
    live: tuple[Stack, httpx.Client, str], body: str, says: str
) -> None:
    _, api, _ = live
    r = api.post("/api/tasks", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, (r.status_code, r.text[:300])
    (error,) = r.json()["detail"]
    assert says in error["msg"], error


def test_good_unicode_still_passes(live: tuple[Stack, httpx.Client, str]) -> None:
    _, api, _ = live
    body = '{"requirement": "snake \\ud83d\\udc0d and caf\\u00e9", "investment": 2.5}'
    r = api.post("/api/tasks", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["requirement"] == "snake \U0001f40d and caf\u00e9"


def test_json_problem_unit() -> None:
    assert json_problem(b"") is None and json_problem(b"{not json") is None  # FastAPI's 422
    assert json_problem(b'{"a": [1, 2.5, "\\u00e9"]}') is None
    assert json_problem(b'{"a": ' + b"1" * 100 + b"}") is None
    assert "digits" in (json_problem(b'{"a": ' + b"1" * 101 + b"}") or "")


@pytest.mark.parametrize(
    "query",
    [
        f"after={2**63}",
        f"after={2**64}",
        f"after={10**20}",
        "after=-1",
        f"after={BIG}",
        f"limit={2**63}",
    ],
)
def test_events_page_out_of_range_is_422(live: tuple[Stack, httpx.Client, str], query: str) -> None:
    _, api, task_id = live
    r = api.get(f"/api/tasks/{task_id}/events?{query}")
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert r.json()["detail"][0]["loc"][:2] == ["query", query.split("=")[0]]
    # The largest valid value still answers (an empty page).
    last = api.get(f"/api/tasks/{task_id}/events?after={2**63 - 1}")
    assert last.status_code == 200 and last.json()["events"] == []


async def _ws(url: str) -> tuple[list[dict[str, Any]], int | None]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(20), websockets.connect(url, ping_interval=None) as ws:
        try:
            async for raw in ws:
                got.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        return got, ws.close_code


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (f"last_event_id={10**20}", "last_event_id"),
        (f"last_event_id={2**63}", "last_event_id"),
        ("last_event_id=-1", "last_event_id"),
        ("last_event_id=abc", "last_event_id"),
        ("last_event_id=", "last_event_id"),
        ("start=maybe", "start"),
    ],
)
def test_websocket_bad_parameters_close_4400(
    live: tuple[Stack, httpx.Client, str], query: str, says: str
) -> None:
    s, _, task_id = live
    got, code = asyncio.run(_ws(f"{s.ws_url}/ws/tasks/{task_id}?{query}"))
    assert code == 4400, (code, got)
    assert [m["type"] for m in got] == ["error"]
    assert got[0]["data"]["message"].startswith(f"Invalid {says}"), got


def test_websocket_largest_resume_point_is_fine(live: tuple[Stack, httpx.Client, str]) -> None:
    s, _, task_id = live
    got, code = asyncio.run(
        _ws(f"{s.ws_url}/ws/tasks/{task_id}?last_event_id={2**63 - 1}&start=false")
    )
    assert code == 1000 and [m["type"] for m in got] == ["connected", "state"], got
    got, code = asyncio.run(_ws(f"{s.ws_url}/ws/tasks/{task_id}?last_event_id=1&start=0"))
    assert code == 1000 and [m["data"]["event_id"] for m in got if m["type"] == "event"] == [2, 3]
