"""Each gateway worker is set up as the single gateway process is: its logs.

uvicorn starts workers as fresh interpreters (multiprocessing "spawn"): what
``python -m gateway`` does to its own process before ``uvicorn.run`` (the log handler that
formats and redacts, ``PR_SET_DUMPABLE`` 0) is not inherited, and must happen again in each.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import psutil

from metastream.stack import Stack
from tests.helpers import poll_for

TOKEN = "tok-workers-5e1d"
TICKET_LIKE = "tkt-workers-a91c"


def _workers(stack: Stack) -> list[psutil.Process]:
    kids = psutil.Process(stack.procs["gateway"].pid).children()
    return [p for p in kids if "--multiprocessing-fork" in " ".join(p.cmdline())]


def _records(stack: Stack) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stack.log("gateway").splitlines() if line]


def test_each_worker_logs_through_the_gateway_handler(
    stack_factory: Any,
) -> None:
    env = {
        "METASTREAM_GATEWAY_WORKERS": "2",
        "METASTREAM_LOG_FORMAT": "json",
        "METASTREAM_ACCESS_LOG": "1",
        "METASTREAM_API_TOKEN": TOKEN,
    }
    s: Stack = stack_factory(env=env)
    workers = poll_for(lambda: len(w := _workers(s)) == 2 and w, 30, what="two workers")
    pids = {p.pid for p in workers}

    # Requests on fresh connections until each worker has logged one (the kernel picks the
    # worker per connection). A ticket in a logged URL is redacted, as in one process.
    def both_logged() -> bool:
        httpx.get(
            f"{s.url}/api/tasks?ticket={TICKET_LIKE}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        ).raise_for_status()
        access = {r["pid"] for r in _records(s) if r.get("logger") == "uvicorn.access"}
        return pids <= access

    poll_for(both_logged, 30, interval=0.1, what="an access line from each worker")
    log = s.log("gateway")
    assert TICKET_LIKE not in log and "ticket=<redacted>" in log
    assert all(r["process"] == "gateway" for r in _records(s))  # every line is one record
