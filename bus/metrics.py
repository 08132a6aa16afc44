"""The bus proxy's Prometheus metrics: plain counters its threads bump, read at scrape time.

The forwarding loop only adds to the ints of :class:`BusCounters` (no lock, no
prometheus_client call per frame); a collector turns them into metrics when scraped. Peer
connections and refused handshakes come from ZeroMQ socket monitors, so they are counted
whatever the loop looks like.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import zmq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("metastream.bus")

SIDES = ("publishers", "subscribers")
_WATCHED = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)


class BusCounters(Collector):
    """What the proxy counts; a forwarding loop increments the ``frames_*`` fields."""

    def __init__(self) -> None:
        # Set by a forwarding loop that counts frames (``zmq.proxy``, in C, cannot): until
        # then the frame counters are not exported rather than exported as a false zero.
        self.loop_counts = False
        self.frames_forwarded = 0  # messages passed publisher -> subscriber side
        self.frames_dropped = 0  # messages the proxy could not pass on (high-water mark)
        self.frames_refused = 0  # messages refused (not from an authorized publisher)
        self.connections = dict.fromkeys(SIDES, 0)  # peers connected now
        self.accepted = dict.fromkeys(SIDES, 0)
        self.refused_connections = dict.fromkeys(SIDES, 0)  # failed handshakes (CURVE)

    def collect(self) -> Iterator[Any]:
        if self.loop_counts:
            yield from self._frames()
        peers = GaugeMetricFamily(
            "metastream_bus_connections", "Peers connected to the proxy", labels=["side"]
        )
        accepted = CounterMetricFamily(
            "metastream_bus_connections_accepted", "Peer connections accepted", labels=["side"]
        )
        refused = CounterMetricFamily(
            "metastream_bus_connections_refused",
            "Peer handshakes that failed (CURVE: unknown or bad keys)",
            labels=["side"],
        )
        for side in SIDES:
            peers.add_metric([side], max(0, self.connections[side]))
            accepted.add_metric([side], self.accepted[side])
            refused.add_metric([side], self.refused_connections[side])
        yield from (peers, accepted, refused)

    def _frames(self) -> Iterator[Any]:
        forwarded = CounterMetricFamily(
            "metastream_bus_frames_forwarded", "Messages the bus proxy forwarded"
        )
        forwarded.add_metric([], self.frames_forwarded)
        yield forwarded
        dropped = CounterMetricFamily(
            "metastream_bus_frames_dropped",
            "Bus messages dropped, by process and reason",
            labels=["process", "reason"],
        )
        dropped.add_metric(["bus", "hwm"], self.frames_dropped)
        dropped.add_metric(["bus", "refused"], self.frames_refused)
        yield dropped


def watch_sockets(ctx: zmq.Context, sockets: dict[str, zmq.Socket], counters: BusCounters) -> None:
    """Count connections of the proxy's sockets (call from the thread that owns them)."""
    for side, sock in sockets.items():
        endpoint = f"inproc://metastream-bus-monitor-{side}-{id(counters)}"
        sock.monitor(endpoint, _WATCHED)
        pair = ctx.socket(zmq.PAIR)
        pair.connect(endpoint)
        threading.Thread(
            target=_read_events,
            args=(pair, side, counters),
            name=f"bus-monitor-{side}",
            daemon=True,
        ).start()


def _read_events(pair: zmq.Socket, side: str, counters: BusCounters) -> None:
    try:
        while True:
            event = parse_monitor_message(pair.recv_multipart())["event"]
            if event == zmq.EVENT_ACCEPTED:
                counters.accepted[side] += 1
                counters.connections[side] += 1
            elif event == zmq.EVENT_DISCONNECTED:
                counters.connections[side] -= 1
            elif event in _FAILED:
                counters.refused_connections[side] += 1
    except zmq.ContextTerminated:
        pass  # the proxy stopped
    finally:
        with contextlib.suppress(zmq.ZMQError):
            pair.close(linger=0)
