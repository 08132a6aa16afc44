"""The supervisor's Prometheus metrics, including what it hears of its task processes.

Task processes run no metrics server (they stay cheap and short-lived): each reports its
event-log statistics in its heartbeats (:class:`bus.messages.WriteStats`, cumulative), and the
supervisor adds the increments up here. Labels are bounded: ``node``, and small fixed sets
(outcome, reason, how) — never a task id.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bus.messages import BATCH_SIZE_BOUNDS, WRITE_SECONDS_BOUNDS, Heartbeat, WriteStats
from core.metrics import Registry

# create/run request -> first event: a warm synthetic task takes ~50 ms, a cold MetaGPT one ~8 s.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
KILL_REASONS = ("cancel", "unresponsive", "memory", "timeout", "disconnect", "shutdown")
# Per-task statistics last heard, kept a while after the task ends so that its final heartbeat
# (which may arrive after the exit was seen) adds only its increment.
REMEMBERED_TASKS = 4096


class WriteTotals(Collector):
    """Sums of every task process's :class:`WriteStats` on this node, as Prometheus metrics."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._last: collections.OrderedDict[str, WriteStats] = collections.OrderedDict()
        self.batches = 0
        self.events = 0
        self.published = 0
        self.write_seconds = 0.0
        self.write_buckets = [0] * (len(WRITE_SECONDS_BOUNDS) + 1)
        self.batch_buckets = [0] * (len(BATCH_SIZE_BOUNDS) + 1)

    def update(self, task_id: str, stats: WriteStats) -> None:
        """Add what changed since this task's previous report."""
        prev = self._last.pop(task_id, None) or WriteStats()
        if stats.batches < prev.batches:
            stats = prev  # an older report arriving late: nothing new in it
        self._last[task_id] = stats
        while len(self._last) > REMEMBERED_TASKS:
            self._last.popitem(last=False)
        self.batches += stats.batches - prev.batches
        self.events += stats.events - prev.events
        self.published += stats.published - prev.published
        self.write_seconds += stats.write_seconds - prev.write_seconds
        _add(self.write_buckets, stats.write_buckets, prev.write_buckets)
        _add(self.batch_buckets, stats.batch_buckets, prev.batch_buckets)

    def settle(self, task_id: str, events: int) -> None:
        """The task ended having persisted ``events``: count what its last report missed.

        A process that dies (or exits at once) sends no final heartbeat; its log says exactly
        how many events it wrote.
        """
        prev = self._last.get(task_id) or WriteStats()
        if events > prev.events:
            self.events += events - prev.events
            self._last[task_id] = msgspec.structs.replace(prev, events=events)

    def collect(self) -> Iterator[Any]:
        persisted = CounterMetricFamily(
            "metastream_events_persisted",
            "Events committed to task event logs (reported by task processes)",
            labels=["node"],
        )
        persisted.add_metric([self.node], self.events)
        yield persisted
        published = CounterMetricFamily(
            "metastream_events_published",
            "Events sent on the bus by task processes (none while nobody subscribes)",
            labels=["node"],
        )
        published.add_metric([self.node], self.published)
        yield published
        yield _histogram(
            "metastream_eventlog_write_seconds",
            "Time to commit one batch of events to a task's event log",
            self.node,
            WRITE_SECONDS_BOUNDS,
            self.write_buckets,
            self.write_seconds,
        )
        yield _histogram(
            "metastream_eventlog_batch_events",
            "Events per event-log commit (group commit batch size)",
            self.node,
            BATCH_SIZE_BOUNDS,
            self.batch_buckets,
            float(self.events),
        )


def _add(total: list[int], now: list[int], before: list[int]) -> None:
    for i in range(min(len(total), len(now))):
        total[i] += now[i] - (before[i] if i < len(before) else 0)


def _histogram(
    name: str, doc: str, node: str, bounds: tuple[float, ...], counts: list[int], total: float
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["node"])
    cumulative, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    family.add_metric([node], cumulative, total)
    return family


class _Gauges(Collector):
    """Values read from the supervisor at scrape time."""

    def __init__(self, node: str, read: Callable[[], dict[str, float]]) -> None:
        self.node = node
        self._read = read

    def collect(self) -> Iterator[Any]:
        values = self._read()
        restarts = CounterMetricFamily(
            "metastream_zygote_restarts", "Fork server (zygote) restarts", labels=["node"]
        )
        restarts.add_metric([self.node], values["zygote_restarts"])
        yield restarts
        running = GaugeMetricFamily(
            "metastream_tasks_running", "Task processes this supervisor runs", labels=["node"]
        )
        running.add_metric([self.node], values["running"])
        yield running


class SupervisorMetrics:
    """Everything the supervisor counts, with the node label applied once."""

    def __init__(self, reg: Registry, node: str) -> None:
        self.registry = reg
        self.node = node
        n = {"node": node}
        self.starts = reg.counter(
            "task_starts", "Task processes started (how: warm, cold, adopted)", ["node", "how"]
        )
        self.ends = reg.counter(
            "task_ends",
            "Tasks ended, by outcome (COMPLETED, FAILED, CANCELLED)",
            ["node", "outcome"],
        )
        self.kills = reg.counter(
            "task_kills", "Task processes the supervisor stopped, by reason", ["node", "reason"]
        )
        self.heartbeat_misses = reg.counter(
            "heartbeat_misses", "Tasks found silent past METASTREAM_HEARTBEAT_TIMEOUT", ["node"]
        ).labels(**n)
        self.queue_seconds = reg.histogram(
            "task_queue_seconds", "Run request (QUEUED) to RUNNING", LATENCY_BUCKETS, ["node"]
        ).labels(**n)
        self.first_event_seconds = reg.histogram(
            "task_first_event_seconds",
            "Run request (QUEUED) to the task's first event persisted",
            LATENCY_BUCKETS,
            ["node"],
        ).labels(**n)
        self.bad_frames = reg.counter(
            "bus_frames_dropped",
            "Bus frames dropped by a receiver (reason: undecodable)",
            ["process", "reason"],
        ).labels(process="supervisor", reason="undecodable")
        self.bus_up = reg.gauge(
            "bus_up", "1 while this process hears its own beacon through the bus", ["process"]
        ).labels(process="supervisor")
        self.writes = WriteTotals(node)
        reg.collector(self.writes)
        self._queued_at: dict[str, float] = {}  # task -> wall-clock run request, until 1st event
        self._first_id: dict[str, int] = {}  # task -> id of the first event of this run

    def gauges(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.collector(_Gauges(self.node, read))

    def started(
        self, task_id: str, how: str, queued_at: str | None, first_event_id: int | None = None
    ) -> None:
        self.starts.labels(node=self.node, how=how).inc()
        if first_event_id is not None and self.registry.enabled:
            self._first_id[task_id] = first_event_id
        if queued_at and self.registry.enabled:
            queued = _wall(queued_at)
            self.queue_seconds.observe(max(0.0, time.time() - queued))
            self._queued_at[task_id] = queued

    def heard(self, beat: Heartbeat) -> None:
        if beat.stats is None or not self.registry.enabled:
            return
        self.writes.update(beat.task_id, beat.stats)
        if beat.stats.first_event_at:
            queued = self._queued_at.pop(beat.task_id, None)
            if queued is not None:
                self.first_event_seconds.observe(max(0.0, beat.stats.first_event_at - queued))

    def awaiting_first_event(self, task_id: str) -> int | None:
        """The id of the task's first event if its latency is still unmeasured."""
        return self._first_id.get(task_id) if task_id in self._queued_at else None

    def first_event(self, task_id: str, timestamp: str) -> None:
        """The first event's own time stamp, for a task that ended before reporting it."""
        queued = self._queued_at.pop(task_id, None)
        if queued is not None:
            self.first_event_seconds.observe(max(0.0, _wall(timestamp) - queued))

    def ended(self, task_id: str, outcome: str, last_event_id: int | None = None) -> None:
        self.ends.labels(node=self.node, outcome=outcome).inc()
        self._queued_at.pop(task_id, None)
        first = self._first_id.pop(task_id, None)
        if first is not None and last_event_id is not None:
            self.writes.settle(task_id, max(0, last_event_id - first + 1))

    def killed(self, reason: str) -> None:
        self.kills.labels(node=self.node, reason=reason).inc()


def _wall(iso: str) -> float:
    """Wall-clock seconds of one of our ISO 8601 UTC stamps (``...Z``)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
