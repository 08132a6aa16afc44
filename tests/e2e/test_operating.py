"""Operating a stack: Prometheus metrics move by what a run did, JSON logs in every process."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.messages import is_task_id
from metastream.stack import Stack, free_port
from tests.helpers import collect, create_task, poll_for, wait_status

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser."""
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


@dataclass
class Run:
    stack: Stack
    gateway: tuple[Samples, Samples]
    supervisor: tuple[Samples, Samples]
    bus: Samples
    tasks: dict[str, dict[str, Any]]  # kind -> final task
    events: int  # persisted by all of them


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One stack (JSON logs, metrics ports) and one run of five kinds of synthetic task."""
    sup_port, bus_port = free_port(), free_port()
    env = {
        "METASTREAM_LOG_FORMAT": "json",
        "METASTREAM_SUPERVISOR_METRICS_PORT": str(sup_port),
        "METASTREAM_BUS_METRICS_PORT": str(bus_port),
        "METASTREAM_HEARTBEAT_TIMEOUT": "3",
        "METASTREAM_NODE": "node-ops",
    }
    s = Stack(tmp_path_factory.mktemp("ops") / "home", env=env).start()
    sup_url = f"http://127.0.0.1:{sup_port}/metrics"
    try:
        with httpx.Client(base_url=s.url, timeout=30) as api:
            gw0, sup0 = scrape(f"{s.url}/metrics"), scrape(sup_url)
            ok = create_task(api, synthetic={"events": 200})
            # 2 KiB each: 6 MB in all, more than the loopback socket buffers hold, so the gateway's
            # writes to the slow reader back up and its live queue overflows (the hub writes
            # small events straight into the socket while it is not backed up).
            slow = create_task(api, synthetic={"events": 3000, "payload_bytes": 2048})
            crash = create_task(api, synthetic={"events": 50, "exit_after": 20, "exit_code": 7})
            boom = create_task(api, synthetic={"events": 50, "exit_after": 5, "crash": "exception"})
            cancel = create_task(api, synthetic={"events": 100_000, "rate": 50})
            hang = create_task(api, synthetic={"events": 10, "hang_after": 3})
            for t in (crash, boom, cancel, hang):
                api.post(f"/api/tasks/{t['id']}/run").raise_for_status()

            async def clients() -> tuple[Any, Any]:
                return await asyncio.gather(
                    collect(s.ws_url, ok["id"]),
                    # A slow reader: far more than METASTREAM_WS_QUEUE behind, served from the log.
                    collect(s.ws_url, slow["id"], delay=0.05, delay_every=50),
                )

            got_ok, got_slow = asyncio.run(clients())
            assert got_ok.event_ids == list(range(1, 201))
            assert got_slow.event_ids == list(range(1, 3001))
            wait_status(api, cancel["id"], {"RUNNING"})
            poll_for(lambda: api.get(f"/api/tasks/{cancel['id']}").json()["progress"] > 0, 20)
            api.post(f"/api/tasks/{cancel['id']}/cancel").raise_for_status()
            final = {
                "ok": wait_status(api, ok["id"], {"COMPLETED"}),
                "slow": wait_status(api, slow["id"], {"COMPLETED"}),
                "crash": wait_status(api, crash["id"], {"FAILED"}),
                "boom": wait_status(api, boom["id"], {"FAILED"}),
                "cancel": wait_status(api, cancel["id"], {"CANCELLED"}),
                "hang": wait_status(api, hang["id"], {"FAILED"}, timeout=30),
            }
            logged = {
                k: len(api.get(f"/api/tasks/{t['id']}/events").json()["events"])
                for k, t in final.items()
                if k not in ("ok", "slow")
            }
            events = 200 + 3000 + sum(logged.values())

            # Task processes report through heartbeats; the supervisor settles exact counts
            # when each task ends: wait until every end is counted.
            def counted() -> Samples | None:
                m = scrape(sup_url)
                done = moved(sup0, m, "metastream_task_ends_total") >= 6
                return (
                    m
                    if done and moved(sup0, m, "metastream_events_persisted_total") >= events
                    else None
                )

            sup1 = poll_for(counted, 20, what="the supervisor's counts of the run")
            gw1 = scrape(f"{s.url}/metrics")
            yield Run(
                s,
                (gw0, gw1),
                (sup0, sup1),
                scrape(f"http://127.0.0.1:{bus_port}/metrics"),
                final,
                events,
            )
    finally:
        s.stop()


def test_supervisor_counts_starts_ends_kills_and_the_event_log(run: Run) -> None:
    before, after = run.supervisor
    node = {"node": "node-ops"}
    assert moved(before, after, "metastream_task_starts_total", **node) == 6
    assert moved(before, after, "metastream_task_ends_total", outcome="COMPLETED") == 2
    assert moved(before, after, "metastream_task_ends_total", outcome="FAILED") == 3
    assert moved(before, after, "metastream_task_ends_total", outcome="CANCELLED") == 1
    assert moved(before, after, "metastream_task_kills_total", reason="cancel") == 1
    assert moved(before, after, "metastream_task_kills_total", reason="unresponsive") == 1
    assert moved(before, after, "metastream_heartbeat_misses_total") == 1
    assert moved(before, after, "metastream_events_persisted_total", **node) == run.events
    # Every task got its first event out, even those that died before a heartbeat said so.
    assert moved(before, after, "metastream_task_first_event_seconds_count") == 6
    assert moved(before, after, "metastream_task_queue_seconds_count") == 6
    assert moved(before, after, "metastream_task_first_event_seconds_sum") > 0
    # The event log's commits: as many latencies as batch sizes, batches hold the events.
    batches = moved(before, after, "metastream_eventlog_batch_events_count")
    assert batches >= 4  # at least the tasks that exited cleanly reported their batches
    assert moved(before, after, "metastream_eventlog_write_seconds_count") == batches
    assert moved(before, after, "metastream_eventlog_write_seconds_sum") > 0
    assert moved(before, after, "metastream_eventlog_batch_events_sum") == run.events
    inf = moved(before, after, "metastream_eventlog_batch_events_bucket", le="+Inf")
    assert inf == batches
    # Events go on the bus only while someone subscribes (not while the slow client is
    # served from the log): some, never more than were persisted.
    assert 0 < moved(before, after, "metastream_events_published_total") <= run.events
    assert total(after, "metastream_tasks_running") == 0
    assert total(after, "metastream_bus_up") == 1


def test_gateway_counts_connections_messages_catchups_and_tasks(run: Run) -> None:
    before, after = run.gateway
    assert moved(before, after, "metastream_ws_connections_opened_total") == 2
    assert moved(before, after, "metastream_ws_closed_total", reason="completed") == 2
    # Every event plus at least a connected message and a final state per client.
    assert moved(before, after, "metastream_ws_messages_sent_total") >= 3200 + 4
    assert moved(before, after, "metastream_ws_log_catchups_total") >= 1  # the slow client
    assert moved(before, after, "metastream_ws_log_events_total") >= 1
    assert total(after, "metastream_ws_connections") == 0
    for status, n in (("COMPLETED", 2), ("FAILED", 3), ("CANCELLED", 1), ("RUNNING", 0)):
        assert total(after, "metastream_tasks", status=status, node="node-ops") == n, status
    assert total(after, "metastream_gateway_bus_connected") == 1
    assert total(run.bus, "metastream_bus_connections", side="subscribers") >= 2


def test_no_metric_is_labelled_with_a_task_id(run: Run) -> None:
    scrapes = [*run.gateway, *run.supervisor, run.bus]
    names = {name for samples in scrapes for name, _ in samples}
    assert len(names) > 30  # the test looked at real pages
    for samples in scrapes:
        for name, labels in samples:
            for key, value in labels:
                assert "task" not in key or key == "status", (name, key)
                assert not is_task_id(value), (name, key, value)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: not a JSON line: {line[:200]}")
    return parsed


def test_every_process_logs_json_with_the_task_id_on_task_lines(run: Run) -> None:
    run.stack.stop()  # everything flushed
    logs = run.stack.home / "logs"
    seen = set()
    for name in ("gateway", "supervisor", "bus", "forkserver"):
        records = _json_lines(logs / f"{name}.log")
        assert records, name
        for r in records:
            assert {"time", "level", "process", "node", "message"} <= r.keys(), r
            assert r["node"] == "node-ops"
            seen.add(r["process"])
    assert seen == {"gateway", "supervisor", "bus", "zygote"}
    # The supervisor's lines about a task carry its id.
    ended = [r for r in _json_lines(logs / "supervisor.log") if " FAILED: " in r["message"]]
    assert {r["task_id"] for r in ended} == {run.tasks[k]["id"] for k in ("crash", "boom", "hang")}
    for t in run.tasks.values():
        records = _json_lines(logs / f"task-{t['id']}.log")
        assert records, t
        assert all(r["task_id"] == t["id"] and r["process"] == "task" for r in records)
    boom = _json_lines(logs / f"task-{run.tasks['boom']['id']}.log")
    failed = [r for r in boom if r["level"] == "ERROR"]
    assert failed and "synthetic failure" in failed[0]["message"]
    assert "RuntimeError" in failed[0]["exc"]  # the traceback rides in the record


def test_the_dashboard_uses_only_metrics_that_exist(run: Run) -> None:
    dashboard = json.loads(
        (Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    used = {m for e in exprs for m in re.findall(r"metastream_[a-z_]+", e)}
    assert len(used) >= 20
    exported = {name for samples in (*run.gateway, *run.supervisor, run.bus) for name, _ in samples}
    assert used - exported == set()
