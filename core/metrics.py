"""Shared Prometheus plumbing: a per-process registry, a switch to turn counting off, a server.

Each process builds its own metrics object (no module-level singletons) on a registry of its
own, so tests and side-by-side stacks never share counters. With ``METASTREAM_METRICS=0`` the
factories hand out :data:`NULL`, whose methods do nothing: the hot paths keep their one-line
increments and pay a method call, not a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("metastream.metrics")
PREFIX = "metastream_"


class _Null:
    """Stands in for any metric (and any labelled child) when metrics are off."""

    def labels(self, *_args: Any, **_kwargs: Any) -> _Null:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def dec(self, _amount: float = 1) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass

    def set_function(self, _fn: Any) -> None:
        pass


NULL: Any = _Null()


class Registry:
    """Creates this process's metrics, or null ones when ``enabled`` is False."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Any:
        if not self.enabled:
            return NULL
        return Counter(PREFIX + name, doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Any:
        if not self.enabled:
            return NULL
        return Gauge(PREFIX + name, doc, list(labels), registry=self.registry)

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Any:
        if not self.enabled:
            return NULL
        return Histogram(
            PREFIX + name, doc, list(labels), registry=self.registry, buckets=list(buckets)
        )

    def collector(self, collector: Any) -> None:
        """Register a custom collector (values computed at scrape time)."""
        if self.enabled:
            self.registry.register(collector)


class Server:
    """prometheus_client's HTTP exporter on ``host:port`` in a daemon thread; port 0 = none."""

    def __init__(self, registry: Registry, host: str, port: int, what: str) -> None:
        self._server: Any = None
        self.port = 0
        if not (registry.enabled and port):
            return
        try:
            self._server, _thread = start_http_server(port, host, registry.registry)
        except OSError as exc:
            # Metrics are for operators: a taken port must not keep the stack from running.
            log.error("%s metrics: cannot listen on %s:%d: %s", what, host, port, exc)
            return
        self.port = port
        log.info("%s metrics on http://%s:%d/metrics", what, host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
