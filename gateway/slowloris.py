"""Connections whose request head does not arrive in time are closed (slowloris).

uvicorn times out idle keep-alive connections, but not a client that sends a request head a
byte at a time: 500 such connections were held for 45 s with none closed, each an open file
and a parser. Here every request head (from its first byte, or from the connection's start)
must be complete within ``head_timeout`` seconds; otherwise the server answers ``408`` and
closes the connection. A complete head cancels the timer; WebSocket upgrades are past it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HTTP_PROTOCOL = "gateway.slowloris:HeadTimeoutProtocol"  # what uvicorn.run(http=...) takes


@functools.cache
def _configured_timeout() -> float:
    from core import settings  # once per process: uvicorn builds a protocol per connection

    return settings.load().head_timeout


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head.

    A module-level class (``HTTP_PROTOCOL`` names it for uvicorn), so that gateway workers,
    which uvicorn starts by pickling its configuration, can import it; the timeout is the
    stack's ``METASTREAM_HEAD_TIMEOUT`` unless a subclass sets ``head_timeout``.
    """

    head_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        timeout = _configured_timeout() if self.head_timeout is None else self.head_timeout
        if self._head_timer is None and timeout > 0:
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Idle time between requests is uvicorn's keep-alive timeout's business.
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def http_protocol(head_timeout: float) -> type[asyncio.Protocol]:
    """The protocol with a fixed head timeout (tests; one process)."""
    return type("FixedHeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout": head_timeout})


_BODY = b"Request head not complete in time"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)
