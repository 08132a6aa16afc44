"""An OpenAI chat-completions compatible HTTP server that answers from a script.

Serves `POST /v1/chat/completions` (and `/chat/completions`), streaming (SSE) or not, and
`GET /v1/models`. The final stream chunk carries `usage`: without it MetaGPT falls back to tiktoken,
which needs the network. Fault modes: "http500" (every call fails with 500), "garbage" (200 with
content no action can parse), "slow" (answers after `slow_delay` seconds, then trickles).
A pace ("demo") streams answers at a readable speed, so a test-mode task can be watched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from runner.scripted_llm.answers import answer

FAULTS = (None, "http500", "garbage", "slow")
# How answers are streamed: (characters per chunk, pause between chunks, pause before the
# first chunk). "demo" reads at about 100 characters a second, so a test-mode task takes
# about a minute and can be watched; the default is as fast as the client reads.
PACES: dict[str | None, tuple[int, float, float]] = {
    None: (48, 0.0, 0.0),
    "fast": (48, 0.0, 0.0),
    "demo": (6, 0.06, 0.5),
}
MODEL = "scripted-metagpt"
CHUNK_CHARS = PACES[None][0]
GARBAGE = "~~ scripted garbage: <<not json>> [CONTENT] {{{ unterminated"

log = logging.getLogger(__name__)


def _tokens(text: str) -> int:
    # A stable, network-free estimate (about four characters per token).
    return max(1, len(text) // 4)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("scripted-llm: " + format, *args)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            self._send_json(400, {"error": {"message": f"bad request: {exc}"}})
            return
        srv = self.server
        srv.count_request()
        if srv.fault == "http500":
            self._send_json(
                500, {"error": {"message": "scripted fault: http500", "type": "server"}}
            )
            return
        if srv.fault == "slow":
            time.sleep(srv.slow_delay)
        text = GARBAGE if srv.fault == "garbage" else answer(messages)
        prompt_text = "".join(str(m.get("content", "")) for m in messages)
        usage = {
            "prompt_tokens": _tokens(prompt_text),
            "completion_tokens": _tokens(text),
            "total_tokens": _tokens(prompt_text) + _tokens(text),
        }
        model = body.get("model") or MODEL
        if body.get("stream"):
            self._stream(text, usage, model)
        else:
            self._send_json(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )

    def _stream(self, text: str, usage: dict[str, int], model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # No Content-Length: the body ends when we close the connection.
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
        }
        base |= {"created": int(time.time()), "model": model}
        size, pause, thinking = PACES[self.server.pace]
        if self.server.fault == "slow":
            pause = max(pause, 0.02)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        if thinking:
            time.sleep(thinking)
        try:
            for i, piece in enumerate(pieces):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                self._event(
                    base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                )
                if pause:
                    time.sleep(pause)
            final = {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": usage,
            }
            self._event(base | final)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("scripted-llm: client went away mid-stream")

    def _event(self, obj: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, addr: tuple[str, int], fault: str | None, slow_delay: float, pace: str | None
    ) -> None:
        super().__init__(addr, _Handler)
        self.fault = fault
        self.pace = pace
        self.slow_delay = slow_delay
        self.requests = 0
        self._lock = threading.Lock()

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1


class ScriptedLLM:
    """The scripted LLM on 127.0.0.1 in a daemon thread; use as a context manager."""

    def __init__(
        self,
        *,
        fault: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        slow_delay: float = 2.0,
        pace: str | None = None,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown scripted fault {fault!r}; expected one of {FAULTS}")
        if pace not in PACES:
            raise ValueError(f"unknown pace {pace!r}; expected one of {sorted(map(str, PACES))}")
        self._server = _Server((host, port), fault, slow_delay, pace)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="scripted-llm", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in /v1)."""
        host = self._server.server_address[0]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{self.port}/v1"

    @property
    def requests(self) -> int:
        """How many chat-completion requests were served."""
        return self._server.requests

    def start(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["FAULTS", "PACES", "HTTPStatus", "ScriptedLLM"]
