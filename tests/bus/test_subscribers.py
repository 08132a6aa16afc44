"""Programmatic subscribers against a live stack: the pyzmq+msgpack example, the Python API."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.messages import STATE_FIELDS, Event, State
from core import settings
from metastream.stack import Stack
from metastream.subscribe import TaskNotFound, stream, subscribe
from tests.e2e.test_cli import Running
from tests.helpers import create_task, log_events, poll_for, wait_status

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bus_subscriber.py"
# Runs a script with every project package made unimportable: the example must need only
# pyzmq and msgpack.
RUN_WITHOUT_PROJECT = (
    "import runpy, sys\n"
    "for name in ('bus', 'gateway', 'metastream', 'runner', 'store'):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("subs") / "home") as s:
        yield s


@pytest.fixture(scope="module")
def endpoint(stack: Stack) -> str:
    return settings.load(stack.env).bus_sub


def _check_live_events(ids: list[int], n: int) -> None:
    # Live only: a subscriber may miss what was published before its subscription reached the
    # publisher, but never gets a duplicate, never goes backwards, and sees the end.
    assert ids == sorted(set(ids)) and ids[-1] == n and set(ids) <= set(range(1, n + 1))
    assert len(ids) >= n // 2


def test_pyzmq_msgpack_example_receives_its_task_only(
    stack: Stack, api: httpx.Client, endpoint: str
) -> None:
    n = 400
    mine = create_task(api, synthetic={"events": n, "rate": 1000})
    other = create_task(api, synthetic={"events": 200, "rate": 1000})
    args = [mine["id"], "--endpoint", endpoint, "--timeout", "30"]
    cmd = [sys.executable, "-I", "-c", RUN_WITHOUT_PROJECT, str(EXAMPLE), *args]
    example = Running(stack, cmd=cmd, cwd=EXAMPLE.parent)
    example.wait_line("ready")  # the subscription is live: start the tasks now
    for task in (other, mine):
        assert api.post(f"/api/tasks/{task['id']}/run").status_code == 200
    assert example.wait(30) == 0, example.err
    assert example.out[0] == "ready"

    lines = [line.split(" ", 1) for line in example.out[1:]]
    assert all(topic.startswith(mine["id"] + "/") for topic, _ in lines)
    msgs: list[dict[str, Any]] = [json.loads(body) for _, body in lines]
    for (topic, _), msg in zip(lines, msgs, strict=True):
        assert topic == f"{mine['id']}/{msg['kind']}" and msg["task_id"] == mine["id"]
    _check_live_events([m["event_id"] for m in msgs if m["kind"] == "event"], n)
    assert msgs[-1]["kind"] == "state" and msgs[-1]["status"] == "COMPLETED"
    assert msgs[-1]["last_event_id"] == n


def test_subscribe_api_yields_typed_live_messages(
    stack: Stack, api: httpx.Client, endpoint: str
) -> None:
    n = 300
    task = create_task(api, synthetic={"events": n, "rate": 1000})

    async def scenario() -> list[Any]:
        ready = asyncio.Event()
        got: list[Any] = []

        async def read() -> None:
            async for msg in subscribe(task["id"], endpoint, on_ready=ready.set):
                got.append(msg)

        async with asyncio.timeout(30):
            reader = asyncio.create_task(read())
            await ready.wait()
            await asyncio.to_thread(api.post, f"/api/tasks/{task['id']}/run")
            await reader
        return got

    got = asyncio.run(scenario())
    _check_live_events([m.event_id for m in got if isinstance(m, Event)], n)
    final = got[-1]
    assert isinstance(final, State) and final.status == "COMPLETED"


def test_subscribe_refuses_an_id_that_could_match_other_tasks() -> None:
    async def scenario() -> None:
        async for _ in subscribe("abc", "ipc:///nonexistent"):
            pass

    with pytest.raises(ValueError, match="not a task id"):
        asyncio.run(scenario())


async def _all(task_id: str, url: str, **kw: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        return [m async for m in stream(task_id, url, **kw)]


def test_stream_resumes_after_last_event_id(stack: Stack, api: httpx.Client) -> None:
    n = 500
    task = create_task(api, synthetic={"events": n, "rate": 2000})
    api.post(f"/api/tasks/{task['id']}/run")
    got = asyncio.run(_all(task["id"], stack.url, last_event_id=100))
    ids = [m["data"]["event_id"] for m in got if m["type"] == "event"]
    assert ids == list(range(101, n + 1))
    assert got[-1]["type"] == "state" and got[-1]["data"]["status"] == "COMPLETED"


@pytest.mark.parametrize(
    "offer,chosen",
    [
        ((), "json"),
        (("metastream.batch.v1",), "metastream.batch.v1"),
        (("metastream.msgpack.v1",), "metastream.msgpack.v1"),
        (("x.v1", "metastream.msgpack.batch.v1"), "metastream.msgpack.batch.v1"),
    ],
)
def test_stream_decodes_every_frame_format(
    stack: Stack, api: httpx.Client, offer: tuple[str, ...], chosen: str
) -> None:
    n = 300
    task = create_task(api, synthetic={"events": n, "rate": 3000, "payload_bytes": 50})
    heard: list[tuple[str, str]] = []
    got = asyncio.run(
        _all(task["id"], stack.url, subprotocols=offer, on_status=lambda *a: heard.append(a))
    )
    assert ("live", f"{stack.url} ({chosen} frames)") in heard
    assert [m["data"] for m in got if m["type"] == "event"] == log_events(api, task["id"])
    assert got[-1]["type"] == "state" and got[-1]["data"]["status"] == "COMPLETED"
    assert set(got[-1]["data"]) == set(STATE_FIELDS)


def test_stream_asks_for_the_fastest_format(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 100, "rate": 1000})
    heard: list[tuple[str, str]] = []
    got = asyncio.run(_all(task["id"], stack.url, on_status=lambda *a: heard.append(a)))
    assert ("live", f"{stack.url} (metastream.msgpack.batch.v1 frames)") in heard
    assert [m["data"]["event_id"] for m in got if m["type"] == "event"] == list(range(1, 101))
    assert got[-1]["data"]["status"] == "COMPLETED"


def test_stream_reads_an_ended_task_from_the_log_without_restarting_it(
    stack: Stack, api: httpx.Client
) -> None:
    task = create_task(api, synthetic={"events": 50, "exit_after": 20, "exit_code": 9})
    api.post(f"/api/tasks/{task['id']}/run")
    before = wait_status(api, task["id"], {"FAILED"})

    got = asyncio.run(_all(task["id"], stack.url))
    assert [m["data"]["event_id"] for m in got if m["type"] == "event"] == list(range(1, 21))
    assert got[-1]["data"]["status"] == "FAILED"
    # A WebSocket connection would have started the FAILED task again; stream() must not.
    assert api.get(f"/api/tasks/{task['id']}").json()["started_at"] == before["started_at"]


def test_stream_unknown_task_raises(stack: Stack) -> None:
    with pytest.raises(TaskNotFound):
        asyncio.run(_all("00000000-0000-4000-8000-000000000000", stack.url))


def test_cli_tail_bus_prints_raw_bus_maps(stack: Stack, api: httpx.Client, endpoint: str) -> None:
    n = 200
    task = create_task(api, synthetic={"events": n, "rate": 1000})
    tail = Running(stack, "tail", "--bus", "--json", "--endpoint", endpoint, task["id"])
    poll_for(lambda: any("subscribed" in e for e in tail.err), 15, what="tail --bus ready")
    api.post(f"/api/tasks/{task['id']}/run")
    assert tail.wait(30) == 0, tail.err
    msgs = tail.messages()
    assert {m["kind"] for m in msgs} <= {"event", "state", "heartbeat"}
    _check_live_events([m["event_id"] for m in msgs if m["kind"] == "event"], n)
    assert msgs[-1]["kind"] == "state" and msgs[-1]["status"] == "COMPLETED"


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "subscribers.md"


def guide_program(name: str, into: Path) -> Path:
    """The fenced code block of the guide that follows ``<!-- tested: name -->``."""
    text = GUIDE.read_text()
    start = text.index(f"<!-- tested: {name}")
    start = text.index("```python\n", start) + len("```python\n")
    path = into / Path(name).name
    path.write_text(text[start : text.index("```\n", start)])
    return path


def test_guide_shows_the_tested_example_verbatim(tmp_path: Path) -> None:
    shown = guide_program("examples/bus_subscriber.py", tmp_path).read_text()
    assert shown == EXAMPLE.read_text()


def test_guide_programs_run_against_a_live_task(
    stack: Stack, api: httpx.Client, tmp_path: Path
) -> None:
    n = 100
    task = create_task(api, synthetic={"events": n, "rate": 1000})
    watch = Running(
        stack, cmd=[sys.executable, str(guide_program("watch_bus.py", tmp_path)), task["id"]]
    )
    watch.wait_line("ready")
    # follow.py's WebSocket connection starts the PENDING task.
    follow = Running(
        stack, cmd=[sys.executable, str(guide_program("follow.py", tmp_path)), task["id"]]
    )
    assert follow.wait(30) == 0, follow.err
    assert follow.out[-1].startswith("-- COMPLETED 100%")
    assert [line.split()[0] for line in follow.out if line.startswith("#")] == [
        f"#{i}" for i in range(1, n + 1)
    ]
    assert watch.wait(30) == 0, watch.err
    assert watch.out[-1].startswith("-- COMPLETED 100%")
    assert any(line.startswith(f"#{n} ") for line in watch.out)


def test_example_names_the_endpoint_and_gives_up_without_a_bus(tmp_path: Path) -> None:
    import subprocess

    missing = f"ipc://{tmp_path}/no-bus.sock"
    task_id = "00000000-0000-4000-8000-000000000000"
    args = [task_id, "--endpoint", missing, "--ready-timeout", "1"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert f"connecting to the bus at {missing}" in done.stderr
    assert f"no answer from the bus at {missing} within 1 s" in done.stderr
    assert "the socket does not exist" in done.stderr


def test_subscribe_gives_up_naming_the_endpoint(tmp_path: Path) -> None:
    from metastream.subscribe import BusUnavailable

    missing = f"ipc://{tmp_path}/no-bus.sock"

    async def first() -> None:
        messages = subscribe("00000000-0000-4000-8000-000000000000", missing, ready_timeout=0.5)
        try:
            await anext(messages)
        finally:
            await messages.aclose()

    with pytest.raises(BusUnavailable, match=f"no answer from the bus at {missing} within 0.5 s"):
        asyncio.run(first())
