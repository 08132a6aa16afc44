"""The bench's client processes say at once when a connection fails before it is ready."""

from __future__ import annotations

import pytest

from bench.clients import ClientGroup
from metastream.stack import free_port


def test_a_connection_that_fails_before_ready_is_reported_not_waited_for() -> None:
    # Nothing listens on the port: the connection is refused. The orchestrator used to wait
    # for a READY that could not come, then raise "no READY in time" without the reason.
    url = f"ws://127.0.0.1:{free_port()}/ws/tasks/x"
    with (
        ClientGroup([url], 1, timeout=60, procs=1) as group,
        pytest.raises(RuntimeError, match=r"a connection failed: .*(ConnectionRefused|Errno 111)"),
    ):
        group.wait_ready(60)
