"""Supervision policies against scripted clocks."""

from __future__ import annotations

import pytest

from runner.policy import Admission, DisconnectPolicy, HeartbeatPolicy, Limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def advance(clock: Clock, hb: HeartbeatPolicy, seconds: float) -> None:
    """Let time pass with the supervisor's beacon coming back every half second."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + 0.5)
        hb.beacon()


def test_heartbeat_overdue_after_timeout_with_startup_grace() -> None:
    clock = Clock()
    hb = HeartbeatPolicy(timeout=5, startup_grace=10, clock=clock)
    hb.started("t")
    advance(clock, hb, 14)
    assert hb.overdue() == []  # still inside the start-up grace
    hb.beat("t")
    advance(clock, hb, 4)
    assert hb.overdue() == []
    advance(clock, hb, 2)
    assert [t for t, _ in hb.overdue()] == ["t"]


def test_heartbeat_silence_while_the_bus_is_down_is_forgiven() -> None:
    clock = Clock()
    hb = HeartbeatPolicy(timeout=5, startup_grace=0, clock=clock)
    hb.started("t")
    clock.now += 30  # no beacon either: the bus is down
    assert not hb.bus_ok() and hb.overdue() == []
    assert hb.beacon() is True  # bus back: clocks restart
    assert hb.overdue() == []
    advance(clock, hb, 6)
    assert [t for t, _ in hb.overdue()] == ["t"]


def test_heartbeat_short_bus_outage_restarts_the_clocks() -> None:
    # The bus restarted in 3 s (under the 5 s timeout): the tasks, silent since it went down,
    # get a whole timeout to reconnect rather than the 2 s left.
    clock = Clock()
    hb = HeartbeatPolicy(timeout=5, startup_grace=0, clock=clock, beacon_every=0.5)
    hb.started("t")
    clock.now += 3
    assert hb.beacon() is True
    advance(clock, hb, 4.5)
    assert hb.overdue() == []
    advance(clock, hb, 1)
    assert [t for t, _ in hb.overdue()] == ["t"]


def test_heartbeat_one_lost_beacon_is_an_outage_a_late_one_is_not() -> None:
    clock = Clock()
    hb = HeartbeatPolicy(timeout=5, startup_grace=0, clock=clock, beacon_every=0.5)
    hb.started("t")
    clock.now += 0.9  # a beacon late by most of a period: the bus was up
    assert hb.beacon() is False
    clock.now += 1.5  # a bus restart of 1.5 s: the clocks restart
    assert hb.beacon() is True
    advance(clock, hb, 4.5)
    assert hb.overdue() == []


def test_disconnect_kill_grace_continue() -> None:
    clock = Clock()
    dp = DisconnectPolicy(clock)
    assert not dp.should_stop("t", "kill", 0)  # never watched: not judged
    dp.lease("t", "gw1", 2, ttl=3)
    assert not dp.should_stop("t", "kill", 0)
    dp.lease("t", "gw1", 0, ttl=3)  # last client left
    assert dp.should_stop("t", "kill", 0)
    assert not dp.should_stop("t", "continue", 0)
    assert not dp.should_stop("t", "grace", 10)
    clock.now += 5
    dp.lease("t", "gw2", 1, ttl=3)  # back within the grace period, on another gateway
    clock.now += 1
    assert not dp.should_stop("t", "grace", 10)


def test_an_expired_lease_counts_as_a_disconnect() -> None:
    clock = Clock()
    dp = DisconnectPolicy(clock)
    dp.lease("t", "gw1", 1, ttl=3)
    clock.now += 2
    assert not dp.should_stop("t", "grace", 5)
    clock.now += 2  # the gateway died: no renewal
    assert not dp.should_stop("t", "grace", 5)
    clock.now += 5
    assert dp.should_stop("t", "grace", 5)
    dp.pause()  # the bus was down: nobody could renew
    assert not dp.should_stop("t", "grace", 5)


def test_limits_and_admission() -> None:
    limits = Limits(timeout=10, memory_mb=100)
    assert limits.breach(5, 50) is None
    late, fat = limits.breach(11, 50), limits.breach(5, 150)
    assert late is not None and late.kind == "time" and "time limit" in late.message
    assert fat is not None and fat.kind == "memory" and "memory limit" in fat.message
    # The kind, not the text, picks where the stop sequence starts.
    assert (late.stop_from, fat.stop_from) == ("term", "kill")
    assert Limits(0, 0).breach(1e9, 1e9) is None
    assert Admission(2).free_slots(0) == 2 and Admission(2).free_slots(3) == 0
    with pytest.raises(ValueError, match="max_running"):
        Admission(0)
