"""``metastream say`` and ``metastream resume`` as a user runs them (real subprocess, stack)."""

from __future__ import annotations

import json

import httpx

from metastream.stack import Stack
from tests.e2e.test_cli import cli, stack  # noqa: F401
from tests.helpers import create_task, wait_status


def test_say_follows_the_new_run_and_refusals_are_clear(stack: Stack) -> None:  # noqa: F811
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": 20, "rate": 0})
        tid = task["id"]
        refused = cli(stack, "say", tid, "too early")  # PENDING: nothing to follow up yet
        assert refused.returncode == 5 and "409" in refused.stderr
        assert "a follow-up starts only once the task is COMPLETED" in refused.stderr
        api.post(f"/api/tasks/{tid}/run").raise_for_status()
        wait_status(api, tid, {"COMPLETED"})
        empty = cli(stack, "say", tid, "   ")
        # The CLI names the rejected field (main's "invalid request: <field>: <why>" format).
        assert empty.returncode == 5 and "invalid request: requirement" in empty.stderr
        said = cli(stack, "say", tid, "twenty more", "--json", timeout=60)
        assert said.returncode == 0, said.stderr
        assert "run 2 (follow_up)" in said.stderr
        messages = [json.loads(line) for line in said.stdout.splitlines()]
        ids = [m["data"]["event_id"] for m in messages if m["type"] == "event"]
        assert ids == list(range(21, 41))  # only the new run, continuing the ids
        nothing = cli(stack, "resume", tid)
        assert nothing.returncode == 5 and "only a CANCELLED or FAILED task" in nothing.stderr
