"""The LLM check at task start, against real HTTP servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from metastream.stack import free_port
from runner.metagpt_flow.llm_check import LLMUnavailable, check_llm
from runner.scripted_llm import ScriptedLLM


def test_a_working_llm_passes_and_a_missing_model_is_named() -> None:
    with ScriptedLLM() as llm:
        assert "answers (1 models)" in check_llm(llm.base_url, "sk-x", "scripted-metagpt")
        assert "answers" in check_llm(llm.base_url, None, None)
        with pytest.raises(
            LLMUnavailable, match=r"does not offer model 'llama3'.*scripted-metagpt"
        ):
            check_llm(llm.base_url, None, "llama3")


def test_nothing_listening_fails_fast_with_the_host() -> None:
    port = free_port()
    with pytest.raises(LLMUnavailable, match=rf"cannot reach the LLM at http://127.0.0.1:{port}"):
        check_llm(f"http://127.0.0.1:{port}/v1", None, None)


@pytest.fixture
def refusing() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://user:secret@127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_refused_key_is_said_and_credentials_are_not(refusing: str) -> None:
    with pytest.raises(LLMUnavailable, match="refused the API key") as err:
        check_llm(refusing, "sk-wrong", None)
    assert "secret" not in str(err.value) and "sk-wrong" not in str(err.value)


def test_a_silent_host_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with pytest.raises(LLMUnavailable, match=r"did not answer GET /models within 0.5 s"):
            check_llm(f"http://127.0.0.1:{port}/v1", None, None, timeout=0.5)
