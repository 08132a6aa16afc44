"""Input limits that protect the gateway from big, deep or fast clients.

Each answer names the limit and the variable that sets it. Request bodies are read here in
full (they are small: ``METASTREAM_MAX_BODY_BYTES``) so that the size and the JSON nesting depth
are checked before anything parses them: ``json.loads`` on a deeply nested body raises
RecursionError, which would otherwise be a 500.

Rates and connection counts are per gateway process and per client address (the peer address;
``X-Forwarded-For`` only from ``METASTREAM_TRUSTED_PROXIES``): several gateways each apply
their own limit.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

import anyio
from starlette.responses import JSONResponse

from core.settings import Settings
from gateway.security import ASGIApp, Receive, Scope, Send

_STRING = re.compile(rb'"[^"]*"')  # after escapes are gone: linear, no backtracking
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")  # one kind of pair: one replace peels one level
MAX_TRACKED_CLIENTS = 10_000


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True if ``body`` nests arrays/objects deeper than ``limit`` (without parsing it).

    Only C-speed bytes operations, whatever the body: a Python loop over a hostile megabyte
    would block the event loop.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the common case: too few brackets to ever get that deep
    # Drop escapes (pairs first, so \\" still ends a string), then strings, then all but
    # brackets. Each round removes the innermost pairs, so the depth is the number of rounds.
    text = _STRING.sub(b"", body.replace(b"\\\\", b"").replace(b'\\"', b""))
    brackets = text.translate(_ONE_KIND, _NOT_BRACKETS)
    for rounds in range(limit + 1):
        peeled = brackets.replace(b"[]", b"")
        if peeled == brackets:
            # All pairs gone: what is left is unbalanced (malformed JSON, which the parser
            # would still recurse into), so count it as nested on top of what was peeled.
            return rounds + brackets.count(b"[") > limit
        brackets = peeled
    return True


MAX_INT_DIGITS = 100  # no field takes more; Python refuses > 4300 digits with a ValueError


class _NotJson(ValueError):
    """Valid for Python's ``json`` but not RFC 8259 JSON the API can take."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number (RFC 8259); send a finite number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NotJson(f"integer with more than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"number {text[:40]} is out of range (not a finite double)")
    return value


def json_problem(body: bytes) -> str | None:
    """Why ``body`` is not JSON the API takes (a 422), or None (also for an empty body).

    Python's ``json`` accepts ``NaN``/``Infinity``, lone UTF-16 surrogates (``"\\ud800"``,
    which no UTF-8 encoder can write back, so even the 422 renderer crashed on them) and
    integers of any length (over 4,300 digits it raises ValueError: a 400). All of these are
    refused here, once, before any route sees the body. Malformed JSON is left to FastAPI.
    """
    if not body.strip():
        return None
    try:
        value = json.loads(
            body,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except _NotJson as exc:
        return str(exc)
    except ValueError:
        return None  # malformed: FastAPI's own 422 says where
    try:
        # C speed: only a string with a lone surrogate fails to encode.
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return "string with a lone UTF-16 surrogate (e.g. \\ud800): not valid Unicode"
    return None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class TokenBuckets:
    """One token bucket per client: ``rate`` per second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, updated)

    def take(self, client: str) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0  # disabled
        now = self._clock()
        tokens, updated = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            self._prune(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        # Memory stays bounded: forget clients whose buckets would be full again anyway.
        if len(self._buckets) <= MAX_TRACKED_CLIENTS:
            return
        full_after = self.burst / self.rate
        self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < full_after}


class ConnectionCounter:
    """Open WebSocket connections per client address, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, client: str, limited: bool = True) -> bool:
        """Count one more connection of ``client``; False (not counted) if over the limit."""
        if limited and self.limit > 0 and self._open[client] >= self.limit:
            return False
        self._open[client] += 1
        return True

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]

    def total(self) -> int:
        return sum(self._open.values())


class LimitsMiddleware:
    """Body size (413), JSON depth (422) and task-creation rate (429) for HTTP requests."""

    def __init__(self, app: ASGIApp, cfg: Settings, counters: Counter[str]) -> None:
        self.app = app
        self.max_body = cfg.max_body_bytes
        self.max_depth = cfg.max_json_depth
        self.creations = TokenBuckets(cfg.create_rate, cfg.create_burst)
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/api/tasks":
            wait = self.creations.take(client_address(scope))
            if wait > 0:
                self.counters["create_rate_limited"] += 1
                limit = f"{self.creations.rate:g}/s, burst {self.creations.burst}"
                await _reject(
                    scope,
                    receive,
                    send,
                    429,
                    f"Too many tasks created: limit {limit} per client "
                    "(METASTREAM_CREATE_RATE, METASTREAM_CREATE_BURST)",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
                return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await self._too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left mid-body: nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await self._too_large(scope, receive, send)
                return
        if self.max_depth > 0 and json_depth_exceeds(bytes(body), self.max_depth):
            self.counters["json_too_deep"] += 1
            msg = f"JSON nested deeper than {self.max_depth} levels (METASTREAM_MAX_JSON_DEPTH)"
            await _invalid_body(scope, receive, send, "json_too_deep", msg)
            return
        try:
            body.decode()
        except UnicodeDecodeError:
            # FastAPI would answer 400; every invalid body is a 422 (CONTRACT).
            await _invalid_body(scope, receive, send, "json_invalid", "body is not UTF-8 JSON")
            return
        problem = await _off_loop(json_problem, bytes(body)) if body else None
        if problem:
            self.counters["json_invalid"] += 1
            await _invalid_body(scope, receive, send, "json_invalid", problem)
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.counters["body_too_large"] += 1
        await _reject(
            scope,
            receive,
            send,
            413,
            f"Request body larger than {self.max_body} bytes (METASTREAM_MAX_BODY_BYTES)",
        )


async def _off_loop(fn: Any, body: bytes) -> Any:
    # Parsing up to METASTREAM_MAX_BODY_BYTES takes milliseconds: not on the event loop.
    if len(body) < 4096:
        return fn(body)
    return await anyio.to_thread.run_sync(fn, body)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _invalid_body(scope: Scope, receive: Receive, send: Send, kind: str, msg: str) -> None:
    # Shaped like FastAPI's own validation errors, as the API schema documents 422s.
    error = {"type": kind, "loc": ["body"], "msg": msg}
    await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)


async def _reject(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(
        scope, receive, send
    )
