"""A task's event log is bounded (issue 21): past METASTREAM_TASK_MAX_LOG_BYTES it ends FAILED."""

from __future__ import annotations

import httpx

from metastream.stack import Stack
from tests.helpers import create_task, log_events, wait_status

LIMIT = 200_000


def test_a_task_past_its_log_limit_fails_naming_it(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(env={"METASTREAM_TASK_MAX_LOG_BYTES": str(LIMIT)})
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": 1000, "payload_bytes": 1000})
        api.post(f"/api/tasks/{task['id']}/run")
        final = wait_status(api, task["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
        events = log_events(api, task["id"])
        small = create_task(api, synthetic={"events": 50, "payload_bytes": 1000})
        api.post(f"/api/tasks/{small['id']}/run")
        ok = wait_status(api, small["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
    assert final["status"] == "FAILED", final
    assert f"event log limit reached: {LIMIT} bytes" in final["last_message"], final
    assert "METASTREAM_TASK_MAX_LOG_BYTES" in final["last_message"]
    assert 50 < len(events) < 1000  # each ~2.4 KB logged: its JSON and its bus body
    logged = sum(len(str(e)) for e in events)
    assert logged < LIMIT + 70_000  # the limit plus the task's own error report
    assert events[-1]["event_type"] == "ERROR"  # it says why, in its own log
    assert ok["status"] == "COMPLETED"  # under the limit: untouched
