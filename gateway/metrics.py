"""The gateway's Prometheus metrics, served on its own ``/metrics`` (behind the API token).

Hot paths make one call per batch of WebSocket frames; everything that can be read at scrape
time instead (tasks by status from the store, open connections, rejections) is, by
collectors. Labels are small fixed sets: never a task id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bus.messages import STATUSES
from core.metrics import PREFIX, Registry

CONTENT_TYPE = CONTENT_TYPE_LATEST
# WebSocket close codes -> the bounded ``reason`` label of metastream_ws_closed_total.
CLOSE_REASONS = {
    1000: "completed",
    1011: "start_failed",
    4401: "unauthorized",
    4403: "forbidden_origin",
    4404: "not_found",
    4429: "too_many",
}


# Kinds of rejection the gateway counts (gateway.limits, gateway.security, gateway.ws): shown
# at 0 from the start, so that alerts on them have a series; kinds added later show once seen.
REJECTION_KINDS = (
    "body_too_large",
    "create_rate_limited",
    "http_unauthorized",
    "json_too_deep",
    "ws_origin_rejected",
    "ws_per_client_rejected",
    "ws_unauthorized",
)


class GatewayMetrics(Collector):
    """What one gateway counts: plain ints, bumped on the event loop, exported by collect().

    Not prometheus_client Counters: their lock costs ~5x a plain add on the WebSocket path, and
    everything here is counted and read (collect runs on the loop too) by one thread.
    """

    def __init__(self, reg: Registry) -> None:
        self.registry = reg
        self.ws_opened = 0
        self.ws_sent = 0
        self.ws_log_catchups = 0
        self.ws_log_events = 0
        self.ws_gap_refills = 0
        self.bus_bad_frames = 0
        self.ws_closed = dict.fromkeys(
            (*CLOSE_REASONS.values(), "client_left", "log_unreadable"), 0
        )
        reg.collector(self)

    def closed(self, code: int) -> None:
        """A connection the server closed (or refused) with ``code``."""
        self.ws_closed[CLOSE_REASONS.get(code, "client_left")] += 1

    def sent(self, n: int) -> None:
        self.ws_sent += n

    def bad_frame(self) -> None:
        self.bus_bad_frames += 1

    def collect(self) -> Iterator[Any]:
        for name, doc, value in (
            ("ws_connections_opened", "WebSocket connections accepted", self.ws_opened),
            ("ws_messages_sent", "WebSocket messages sent to clients", self.ws_sent),
            (
                "ws_log_catchups",
                "Times a client fell more than METASTREAM_WS_QUEUE behind and was served from "
                "the log",
                self.ws_log_catchups,
            ),
            (
                "ws_log_events",
                "Events sent to clients from the event log (replay and catch-up)",
                self.ws_log_events,
            ),
            (
                "ws_gap_refills",
                "Live events found missing on the bus and refilled from the log",
                self.ws_gap_refills,
            ),
        ):
            family = CounterMetricFamily(PREFIX + name, doc)
            family.add_metric([], value)
            yield family
        closed = CounterMetricFamily(
            PREFIX + "ws_closed", "WebSocket connections closed, by reason", labels=["reason"]
        )
        for reason, n in self.ws_closed.items():
            closed.add_metric([reason], n)
        yield closed
        dropped = CounterMetricFamily(
            PREFIX + "bus_frames_dropped",
            "Bus messages dropped by a receiver, by process and reason",
            labels=["process", "reason"],
        )
        dropped.add_metric(["gateway", "undecodable"], self.bus_bad_frames)
        yield dropped

    def collect_from(self, collector: Collector) -> Callable[[], None]:
        """Register a collector for this app's lifespan; returns its unregistration."""
        self.registry.collector(collector)

        def remove() -> None:
            if self.registry.enabled:
                self.registry.registry.unregister(collector)

        return remove

    def exposition(self) -> bytes:
        """The text format. Runs the collectors: call it on the event loop, which owns what
        they read (these counters, connections, the hub's tables); read the store before."""
        return generate_latest(self.registry.registry)


class GatewayState(Collector):
    """Values read at scrape time: tasks by status and node, connections, rejections."""

    def __init__(
        self,
        connections: Callable[[], int],
        watched_tasks: Callable[[], int],
        rejections: Counter[str],
        bus_connected: Callable[[], bool],
    ) -> None:
        # Tasks by (status, node), read from the store just before each scrape (off the loop).
        self.status_counts: list[tuple[str, str | None, int]] = []
        self._connections = connections
        self._watched = watched_tasks
        self._rejections = rejections
        self._bus_connected = bus_connected

    def collect(self) -> Iterator[Any]:
        tasks = GaugeMetricFamily(
            "metastream_tasks", "Tasks in the store by status and node", labels=["status", "node"]
        )
        seen: set[tuple[str, str]] = set()
        for status, node, count in self.status_counts:
            key = (status, node or "")
            seen.add(key)
            tasks.add_metric(list(key), count)
        for status in STATUSES:  # every status shows, at 0 when empty: alerts need a series
            if not any(s == status for s, _ in seen):
                tasks.add_metric([status, ""], 0)
        yield tasks
        open_now = GaugeMetricFamily("metastream_ws_connections", "WebSocket connections open")
        open_now.add_metric([], self._connections())
        yield open_now
        watched = GaugeMetricFamily("metastream_ws_watched_tasks", "Tasks with open connections")
        watched.add_metric([], self._watched())
        yield watched
        rejected = CounterMetricFamily(
            "metastream_gateway_rejections",
            "Requests and connections refused by the gateway's limits and auth, by kind",
            labels=["kind"],
        )
        counts = dict.fromkeys(REJECTION_KINDS, 0) | dict(self._rejections)
        for kind, n in sorted(counts.items()):
            rejected.add_metric([kind], n)
        yield rejected
        bus = GaugeMetricFamily(
            "metastream_gateway_bus_connected",
            "1 while this gateway hears its own beacon through the bus (the /readyz bus check)",
        )
        bus.add_metric([], float(self._bus_connected()))
        yield bus
