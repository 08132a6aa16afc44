"""Who may talk to the gateway: API tokens, WebSocket tickets, the Origin check, bind policy.

Tokens come from ``METASTREAM_API_TOKEN`` (comma-separated). Browsers cannot set headers on a
WebSocket, so they trade a token for a short-lived ticket bound to one task
(``POST /api/tasks/{id}/ticket``) and pass it as ``?ticket=``. Tickets are stateless: an HMAC
over the task id and the expiry time, so any gateway holding the same key accepts them. The key
is ``METASTREAM_TICKET_SECRET`` if set, else derived from the tokens; never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from core.settings import Settings

log = logging.getLogger("metastream.security")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
TICKET_VERSION = "v1"
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
# Paths that need a token when auth is on; the static web view, /healthz and /readyz stay open
# (they carry no task data: load balancers probe them), the OpenAPI description too. /metrics
# shows the stack's activity: Prometheus sends the token (``authorization`` in its config).
PROTECTED_PREFIXES = ("/api/", "/metrics")


class Guard:
    """Checks credentials and origins for one gateway."""

    def __init__(self, cfg: Settings, counters: Counter[str] | None = None) -> None:
        self._tokens = [t.encode() for t in cfg.api_tokens.values]
        self.ttl = cfg.ticket_ttl
        self.allowed_origins = {_normalize_origin(o) for o in cfg.allowed_origins}
        self.counters: Counter[str] = counters if counters is not None else Counter()
        if cfg.ticket_secret:
            material = "\n".join(cfg.ticket_secret.values).encode()
        elif self._tokens:
            material = b"\n".join(sorted(self._tokens))
        else:
            material = secrets.token_bytes(32)  # auth is off; tickets are then never needed
        # A derived key: a ticket never reveals anything usable as a token.
        self._key = hmac.new(b"metastream ws-ticket key", material, hashlib.sha256).digest()

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def token_ok(self, authorization: str | None) -> bool:
        """True if the ``Authorization`` header carries a configured bearer token."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        given = value.strip().encode()
        # Compare against every token (no early exit) in constant time each.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)
        return ok

    def issue_ticket(self, task_id: str, now: float | None = None) -> tuple[str, int]:
        """A ticket for one task's WebSocket and its lifetime in seconds."""
        ttl = max(1, int(self.ttl))
        expires = int(now if now is not None else time.time()) + ttl
        return f"{TICKET_VERSION}.{expires}.{self._sign(task_id, expires)}", ttl

    def ticket_ok(self, ticket: str | None, task_id: str, now: float | None = None) -> bool:
        if not ticket or len(ticket) > 200:
            return False
        version, _, rest = ticket.partition(".")
        expires_s, _, signature = rest.partition(".")
        if version != TICKET_VERSION or not expires_s.isdigit():
            return False
        expires = int(expires_s)
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(signature, self._sign(task_id, expires))

    def _sign(self, task_id: str, expires: int) -> str:
        msg = f"{task_id}\n{expires}".encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def origin_ok(self, headers: Headers) -> bool:
        """Same origin, a configured origin, or no Origin at all (not a browser)."""
        origin = headers.get("origin")
        if origin is None:
            return True
        normalized = _normalize_origin(origin)
        if normalized in self.allowed_origins or "*" in self.allowed_origins:
            return True
        parsed = _host_port(origin)
        host = headers.get("host")
        if parsed is None or not host:
            return False
        o_host, o_port, o_scheme = parsed
        h_host, _, h_port = host.lower().rpartition(":") if _has_port(host) else (host, "", "")
        if h_host.lower() != o_host:
            return False
        if h_port:
            return h_port.isdigit() and int(h_port) == o_port
        return o_port == _DEFAULT_PORTS.get(o_scheme)

    def ws_problem(self, headers: Headers, task_id: str, ticket: str | None) -> tuple[int, str]:
        """``(0, "")`` if a WebSocket may proceed, else its close code and message."""
        if not self.origin_ok(headers):
            self.counters["ws_origin_rejected"] += 1
            return CLOSE_FORBIDDEN_ORIGIN, "Origin not allowed (METASTREAM_ALLOWED_ORIGINS)"
        if not self.enabled:
            return 0, ""
        if self.token_ok(headers.get("authorization")) or self.ticket_ok(ticket, task_id):
            return 0, ""
        self.counters["ws_unauthorized"] += 1
        return CLOSE_UNAUTHORIZED, "Unauthorized: a valid API token or ticket is required"


def _has_port(host: str) -> bool:
    # "[::1]:8000" and "h:80" have one; "[::1]" does not.
    return ":" in host.rsplit("]", 1)[-1]


def _host_port(origin: str) -> tuple[str, int, str] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6, as it appears in a Host header
    return host, port or _DEFAULT_PORTS[scheme], scheme


def _normalize_origin(origin: str) -> str:
    """``scheme://host:port`` in lower case, so configured and sent origins compare equal."""
    parsed = _host_port(origin)
    if parsed is None:
        return origin.strip().lower()
    host, port, scheme = parsed
    return f"{scheme}://{host}:{port}"


class AuthMiddleware:
    """Requires a bearer token on protected HTTP paths when tokens are configured."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.guard.enabled
            or not scope["path"].startswith(PROTECTED_PREFIXES)
            or self.guard.token_ok(Headers(scope=scope).get("authorization"))
        ):
            await self.app(scope, receive, send)
            return
        self.guard.counters["http_unauthorized"] += 1
        response = JSONResponse(
            {"detail": "Unauthorized: send Authorization: Bearer <API token>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(cfg: Settings, host: str) -> str | None:
    """Why the gateway must not listen on ``host`` with this configuration, if it must not."""
    if cfg.api_tokens or cfg.insecure or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host}: no METASTREAM_API_TOKEN is set, so anyone who can reach "
        "it could run tasks. Set a token, listen on 127.0.0.1, or pass --insecure "
        "(METASTREAM_INSECURE=1) to accept that risk."
    )


def describe(cfg: Settings, host: str) -> str:
    """The start-up line that says how the gateway is protected (never the tokens)."""
    if cfg.api_tokens:
        n = len(cfg.api_tokens.values)
        return f"auth: ON ({n} API token(s); WebSocket tickets last {cfg.ticket_ttl:g} s)"
    if is_loopback(host):
        return f"auth: OFF (no METASTREAM_API_TOKEN); listening on loopback {host} only"
    return f"auth: OFF and INSECURE: listening on {host} with no API token (--insecure)"
