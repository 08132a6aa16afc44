"""The browser as an attacker: DNS rebinding (Host) and cross-site requests (Origin).

A web page the user visits can make the browser talk to the loopback gateway. Two checks keep
it out:

- **Host**: with DNS rebinding, ``evil.example`` first resolves to the attacker and then to
  127.0.0.1, so the page's requests reach the gateway *same-origin* (``Host:
  evil.example:8000``) and the Origin check passes. Only loopback names (``localhost``,
  ``*.localhost``, loopback IP literals), the address the gateway listens on, and
  ``METASTREAM_ALLOWED_HOSTS`` are accepted; anything else answers ``400``, WebSocket upgrades
  included. Enforced when no API token is set (then the network position is the only
  credential) and whenever ``METASTREAM_ALLOWED_HOSTS`` is set.
- **Origin** on state-changing requests (every method but GET, HEAD, OPTIONS), in every mode:
  a foreign ``Origin`` answers ``403`` (cross-site request forgery: a page may POST a body-less
  ``/run`` or ``/cancel`` without a preflight). Requests without ``Origin`` are not from a
  browser page and pass.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from core.settings import Settings
from gateway.security import ASGIApp, Guard, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARD_BINDS = {"", "0.0.0.0", "::", "[::]", "*"}


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower case, without port or IPv6 brackets."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True  # RFC 6761: browsers resolve these to loopback themselves
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Which ``Host`` headers this gateway answers."""

    def __init__(self, cfg: Settings) -> None:
        configured = [host_name(h) if h != "*" else "*" for h in cfg.allowed_hosts]
        self.enforced = not cfg.api_tokens or bool(configured)
        self.any = "*" in configured
        self.exact = {h for h in configured if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in configured if h.startswith("*."))
        if cfg.host.strip().lower() not in _WILDCARD_BINDS:
            self.exact.add(host_name(cfg.host))

    def allows(self, header: str | None) -> bool:
        if not self.enforced or self.any:
            return True
        if not header:
            return False
        host = host_name(header)
        return (
            is_loopback_name(host)
            or host in self.exact
            or bool(self.suffixes and host.endswith(self.suffixes))
        )


class BrowserGuardMiddleware:
    """Refuses foreign ``Host`` headers (400) and foreign-Origin state changes (403)."""

    def __init__(self, app: ASGIApp, cfg: Settings, guard: Guard, counters: Counter[str]):
        self.app = app
        self.hosts = HostPolicy(cfg)
        self.guard = guard
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.hosts.allows(headers.get("host")):
            self.counters["host_rejected"] += 1
            detail = (
                "Invalid Host header: only loopback names and METASTREAM_ALLOWED_HOSTS are "
                "served (DNS rebinding protection)"
            )
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["method"] not in SAFE_METHODS
            and not self.guard.origin_ok(headers)
        ):
            self.counters["http_origin_rejected"] += 1
            detail = (
                "Origin not allowed: state-changing requests from other sites are refused "
                "(METASTREAM_ALLOWED_ORIGINS)"
            )
            await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)
