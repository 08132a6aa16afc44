"""Programmatic subscribers: follow a task over the ZeroMQ bus or over the WebSocket.

Two async generators, for two different needs:

- :func:`subscribe` reads the bus directly (a ZeroMQ ``SUB`` socket on the stack's XPUB
  endpoint). It is live only: what was published before the subscription reached the bus, or
  while the bus was down, is never delivered. Cheap, no gateway needed, same machine or network.
- :func:`stream` reads the gateway's WebSocket and resumes with ``last_event_id`` after any
  network error or gateway restart, so every event arrives exactly once and in order, then the
  final state. Use it when you need the whole history.

This module is their public home; they live in ``bus_subscriber`` and ``ws_stream`` (built on
``ws_resume``). See ``docs/subscribers.md`` for the guide and complete examples.
"""

from __future__ import annotations

from bus.messages import Event, Heartbeat, State
from metastream.bus_subscriber import BusUnavailable, as_dict, bus_problem, subscribe
from metastream.ws_resume import (
    AuthError,
    GatewayError,
    GatewayUnreachable,
    StreamError,
    TaskNotFound,
    decode_frame,
    default_url,
)
from metastream.ws_stream import stream

__all__ = [
    "AuthError",
    "BusUnavailable",
    "Event",
    "GatewayError",
    "GatewayUnreachable",
    "Heartbeat",
    "State",
    "StreamError",
    "TaskNotFound",
    "as_dict",
    "bus_problem",
    "decode_frame",
    "default_url",
    "stream",
    "subscribe",
]
