"""The LLM that never answers (issue 21): a real MetaGPT task process against real sockets.

A server that accepts connections and never replies used to leave a task RUNNING in WritePRD
for hours (600 s per call times MetaGPT's retries), and a closed port took ~160 s to fail.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from metastream.stack import Stack, free_port
from tests.helpers import create_task, wait_status

MODELS = b'{"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}'
STALL = 3


class MuteLLM:
    """Accepts every connection; answers ``GET /v1/models`` only if ``models`` is set, and
    nothing else ever (the connections are held open)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.models = False
        self.calls: list[float] = []  # when each completion request arrived
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self._held.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            head = conn.recv(65536)
        except OSError:
            return
        if head.startswith(b"GET /v1/models") and self.models:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(MODELS), MODELS)
            )
            conn.close()
        elif head.startswith(b"POST"):
            self.calls.append(time.monotonic())  # and never answer

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._held:
            c.close()
        self.sock.close()


@pytest.fixture
def mute() -> Iterator[MuteLLM]:
    server = MuteLLM()
    yield server
    server.close()


def _env(base_url: str) -> dict[str, str]:
    return {
        "METASTREAM_LLM_BASE_URL": base_url,
        "METASTREAM_LLM_MODEL": "gpt-4o-mini",
        "METASTREAM_LLM_TIMEOUT": "2",
        "METASTREAM_LLM_STALL_TIMEOUT": str(STALL),
    }


def _fail(api: httpx.Client, timeout: float) -> tuple[dict, float]:
    task = create_task(api, requirement="a snake game")
    started = time.monotonic()
    api.post(f"/api/tasks/{task['id']}/run")
    final = wait_status(api, task["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=timeout)
    return final, time.monotonic() - started


def test_an_llm_that_accepts_and_never_answers_fails_the_task(stack_factory, mute: MuteLLM) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory(env=_env(mute.base_url))
    host = f"http://127.0.0.1:{mute.port}"
    with httpx.Client(base_url=s.url, timeout=30) as api:
        # Not even the model list: the start-up check gives up within seconds.
        final, took = _fail(api, 30)
        assert final["status"] == "FAILED" and host in final["last_message"], final
        assert took < 15, took
        # The model list answers, the completions never do: the stall watchdog ends it.
        mute.models = True
        final, _ = _fail(api, 120)
    assert final["status"] == "FAILED", final
    assert f"LLM stalled: no response from {host} for {STALL} s" in final["last_message"], final
    assert mute.calls, "MetaGPT never called the LLM"
    # Failed within the stall limit (plus polling and the stop) of its first call.
    assert time.monotonic() - mute.calls[0] < STALL + 20


def test_a_closed_port_fails_within_seconds_naming_the_host(stack_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # nobody listens there
    s: Stack = stack_factory(env=_env(f"http://127.0.0.1:{port}/v1"))
    with httpx.Client(base_url=s.url, timeout=30) as api:
        final, took = _fail(api, 30)
    assert final["status"] == "FAILED", final
    assert f"127.0.0.1:{port}" in final["last_message"] and "refused" in final["last_message"]
    assert took < 10, took
