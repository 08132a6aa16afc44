"""Follow a task live over the ZeroMQ bus (no history, no gateway): :func:`subscribe`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from bus.client import AsyncSubscriber, DecodeFailure, decode_frames
from bus.messages import (
    SYSTEM_TOPIC_PREFIX,
    TERMINAL_STATUSES,
    BusMessage,
    Event,
    Heartbeat,
    State,
    is_task_id,
)
from core import settings

log = logging.getLogger("metastream.subscribe")

# After the final state arrives on the bus, events published just before it by the task process
# (a different publisher, so not ordered with the supervisor's state) get this long to arrive.
FINAL_GRACE_S = 1.0


class BusUnavailable(Exception):
    """The bus did not prove the subscription live within ``ready_timeout``."""


def bus_problem(endpoint: str, waited: float) -> str:
    """Why nothing came from the bus, naming the endpoint (and a missing ipc socket)."""
    text = f"no answer from the bus at {endpoint} within {waited:g} s"
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :]):
        text += (
            " (the socket does not exist: is the stack running, and are METASTREAM_HOME or "
            "METASTREAM_BUS_SUB the stack's?)"
        )
    return text


def as_dict(msg: BusMessage) -> dict[str, Any]:
    """A decoded bus message as the plain map that was on the wire (with ``kind``)."""
    return {"kind": msg.__struct_config__.tag, **msgspec.structs.asdict(msg)}


async def subscribe(
    task_id: str,
    endpoint: str | None = None,
    *,
    kinds: tuple[str, ...] = ("event", "state", "heartbeat"),
    until_end: bool = True,
    on_ready: Callable[[], None] | None = None,
    ctx: zmq.asyncio.Context | None = None,
    ready_timeout: float | None = None,
) -> AsyncGenerator[Event | State | Heartbeat, None]:
    """Yield a task's live bus messages (:class:`Event`, :class:`State`, :class:`Heartbeat`).

    ``endpoint`` defaults to ``METASTREAM_BUS_SUB`` (the stack's XPUB side). With ``until_end``
    the generator returns after the task's final state (plus a short grace for events still in
    flight); otherwise it runs until the caller stops. ``on_ready`` is called once the
    subscription is proven live end to end (the supervisor's beacon or a task message came
    through): anything published after that is delivered. Nothing before it is: the bus keeps
    no history. With ``ready_timeout``, :class:`BusUnavailable` (naming the endpoint) is raised
    if that proof has not come within so many seconds.
    """
    if not is_task_id(task_id):
        # Only canonical ids are safe prefixes: "abc" would match every task starting with it.
        raise ValueError(f"not a task id (a canonical 36-character UUID): {task_id!r}")
    unknown = set(kinds) - {"event", "state", "heartbeat"}
    if unknown:
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    endpoint = endpoint or settings.load().bus_sub
    sub = AsyncSubscriber(endpoint, ctx)
    try:
        prefixes = [task_id] if len(kinds) == 3 else [f"{task_id}/{k}" for k in kinds]
        sub.subscribe(prefixes)
        if on_ready is not None or ready_timeout is not None:
            sub.subscribe([SYSTEM_TOPIC_PREFIX + b"supervisor/"])
        ready = on_ready is None and ready_timeout is None
        highest = 0
        final: State | None = None
        while True:
            if not ready and ready_timeout is not None:
                try:
                    async with asyncio.timeout(ready_timeout):
                        frames = await sub.recv_frames()
                except TimeoutError:
                    raise BusUnavailable(bus_problem(endpoint, ready_timeout)) from None
            elif final is None:
                frames = await sub.recv_frames()
            else:
                try:
                    async with asyncio.timeout(FINAL_GRACE_S):
                        frames = await sub.recv_frames()
                except TimeoutError:
                    return
            if not ready:
                ready = True
                sub.unsubscribe(SYSTEM_TOPIC_PREFIX + b"supervisor/")
                if on_ready is not None:
                    on_ready()
            if frames and frames[0].startswith(SYSTEM_TOPIC_PREFIX):
                continue
            _tid, msg = decode_frames(frames)
            if isinstance(msg, DecodeFailure):
                log.warning("skipped an undecodable bus frame: %s", msg.error)
                continue
            if not isinstance(msg, Event | State | Heartbeat):
                continue  # kinds added later (never on a task's topics today)
            if isinstance(msg, Event):
                highest = max(highest, msg.event_id)
            yield msg
            if isinstance(msg, State) and until_end and msg.status in TERMINAL_STATUSES:
                final = msg
            if final is not None and ("event" not in kinds or highest >= final.last_event_id):
                return
    finally:
        sub.close()
