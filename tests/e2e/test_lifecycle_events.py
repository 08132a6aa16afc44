"""Process lifecycle events on the bus (``_sys/process/``), seen as a third party sees them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import psutil
import pytest
import zmq

from core import settings
from metastream.stack import Stack
from tests.e2e.test_supervision import FAST
from tests.helpers import create_task, poll_for, wait_status

pytestmark = pytest.mark.timeout(120)


class Listener:
    """A raw pyzmq + msgpack subscriber to ``_sys/process/`` (and the supervisor's beacon)."""

    def __init__(self, endpoint: str) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.beacons = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.connect(endpoint)
        self._sock.subscribe(b"_sys/process/")
        self._sock.subscribe(b"_sys/supervisor/")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            topic, body = self._sock.recv_multipart()
            if topic.startswith(b"_sys/supervisor/"):
                self.beacons += 1
            else:
                self.seen.append((topic.decode(), msgpack.unpackb(body)))

    def find(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        for topic, msg in list(self.seen):
            wanted = topic == f"_sys/process/{kind}" and msg["kind"] == kind
            if wanted and all(msg.get(k) == v for k, v in fields.items()):
                return msg
        return None

    def wait(self, kind: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        return poll_for(lambda: self.find(kind, **fields), timeout, what=f"{kind} {fields}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()


@pytest.fixture
def stack(stack_factory) -> Stack:  # type: ignore[no-untyped-def]
    return stack_factory(env=FAST)


@pytest.fixture
def events(stack: Stack) -> Iterator[Listener]:
    listener = Listener(settings.load(stack.env).bus_sub)
    # Hearing the beacon proves the subscription reached the proxy: nothing after is missed.
    poll_for(lambda: listener.beacons, 20, what="the supervisor's beacon")
    yield listener
    listener.close()


def _row_pid(api: httpx.Client, stack: Stack, task_id: str) -> int:
    from store import Store

    store = Store(f"sqlite:///{stack.home / 'data' / 'metastream.db'}")
    try:
        row = store.get_task(task_id)
        assert row is not None and row.pid is not None
        return row.pid
    finally:
        store.close()


def test_spawned_stopped_readopted_and_zygote_restarted(stack: Stack, events: Listener) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": 100_000, "rate": 50})
        api.post(f"/api/tasks/{task['id']}/run")
        spawned = events.wait("spawned", task_id=task["id"])
        assert spawned["pid"] == _row_pid(api, stack, task["id"]) and spawned["node"]
        api.post(f"/api/tasks/{task['id']}/cancel")
        stopped = events.wait("stopped", task_id=task["id"])
        # The synthetic task flushes and exits when asked (SIGINT): the first step ended it.
        assert stopped["how"] == "asked" and stopped["status"] == "CANCELLED"
        assert stopped["pid"] == spawned["pid"] and stopped["reason"] == "Cancelled by user"

        kept = create_task(api, synthetic={"events": 100_000, "rate": 50})
        api.post(f"/api/tasks/{kept['id']}/run")
        pid = events.wait("spawned", task_id=kept["id"])["pid"]
        stack.kill("supervisor")
        stack.start_component("supervisor")
        stack.wait_healthy()
        assert events.wait("readopted", task_id=kept["id"])["pid"] == pid

        # The new supervisor's zygote dies: it is restarted, and that is announced.
        supervisor = psutil.Process(stack.procs["supervisor"].pid)

        def zygote() -> psutil.Process | None:
            for p in supervisor.children():
                if "runner.forkserver_zygote" in " ".join(p.cmdline()):
                    return p
            return None

        poll_for(zygote, 30, what="the zygote").kill()
        restarted = events.wait("zygote_restarted")
        assert restarted["restarts"] == 1

        api.post(f"/api/tasks/{kept['id']}/cancel")
        wait_status(api, kept["id"], {"CANCELLED"})
        assert events.wait("stopped", task_id=kept["id"])["status"] == "CANCELLED"
