"""The supervisor's sums of task processes' heartbeat statistics."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bus.messages import BATCH_SIZE_BOUNDS, WRITE_SECONDS_BOUNDS, Heartbeat, WriteStats
from core.metrics import Registry
from runner.metrics import SupervisorMetrics

T1 = "11111111-1111-4111-8111-111111111111"
T2 = "22222222-2222-4222-8222-222222222222"


def stats(batches: int, events: int, write_at: int = 0, batch_at: int = 0) -> WriteStats:
    wb = [0] * (len(WRITE_SECONDS_BOUNDS) + 1)
    bb = [0] * (len(BATCH_SIZE_BOUNDS) + 1)
    wb[write_at] = batches
    bb[batch_at] = batches
    return WriteStats(batches, events, events, 0.001 * batches, wb, bb, first_event_at=1.0)


def beat(task_id: str, s: WriteStats) -> Heartbeat:
    return Heartbeat(task_id=task_id, last_event_id=s.events, pid=1, sent_at=0.0, stats=s)


def samples(reg: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(reg.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_reports_add_increments_late_ones_nothing_and_ends_settle_exactly() -> None:
    reg = Registry()
    m = SupervisorMetrics(reg, "n1")
    m.started(T1, "warm", "2026-01-01T00:00:00.000Z", first_event_id=1)
    m.heard(beat(T1, stats(2, 10)))
    m.heard(beat(T2, stats(1, 5, write_at=3, batch_at=2)))
    m.heard(beat(T1, stats(5, 30)))
    m.heard(beat(T1, stats(2, 10)))  # an older report, late: nothing new
    m.ended(T1, "FAILED", last_event_id=42)  # died after persisting 42: 12 never reported
    m.heard(beat(T1, stats(6, 42)))  # its final report after all: only the extra batch
    got = samples(reg)
    node = (("node", "n1"),)
    assert got[("metastream_events_persisted_total", node)] == 42 + 5
    assert got[("metastream_eventlog_batch_events_count", node)] == 6 + 1
    assert got[("metastream_eventlog_write_seconds_count", node)] == 6 + 1
    le = {
        k[1][0][1]: v for k, v in got.items() if k[0] == "metastream_eventlog_batch_events_bucket"
    }
    assert le["1.0"] == 6 and le["5.0"] == 7 and le["+Inf"] == 7  # cumulative buckets
    assert got[("metastream_task_ends_total", (("node", "n1"), ("outcome", "FAILED")))] == 1
    assert got[("metastream_task_first_event_seconds_count", node)] == 1


def test_metrics_off_counts_nothing_and_exports_nothing() -> None:
    reg = Registry(enabled=False)
    m = SupervisorMetrics(reg, "n1")
    m.started(T1, "warm", "2026-01-01T00:00:00.000Z", first_event_id=1)
    m.heard(beat(T1, stats(2, 10)))
    m.ended(T1, "COMPLETED", last_event_id=10)
    m.heartbeat_misses.inc()
    assert samples(reg) == {}
