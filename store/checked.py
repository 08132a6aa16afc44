"""Checks on what a task logged, made before any of it leaves the store.

A task writes its own event log, so every row is the task's word. The gateway sends rows on
as they are: a JSON row is spliced into ``{"type":"event","data": ... }`` (WebSocket
frames, batch frames, the REST events page) and a bus body is forwarded as a binary frame.
Unchecked, a row could therefore carry more than its event: a JSON row such as
``{...}},{"type":"state","data":{"status":"COMPLETED",...`` becomes, inside a batch frame
or the REST page's array, a second message, a final state the task never had; a body could be
a state outright. The live path cannot be fooled so (it decodes every bus message and drops
what is not an event of its topic's task), and these checks make the log path hold the same:

- a JSON row is exactly one JSON object, valid UTF-8, whose ``event_id`` and ``task_id`` are
  its row's (fields the gateway does not use are not looked at);
- a bus body is exactly the canonical MessagePack of an ``Event`` with its row's id and task:
  not another kind, not a second object, no extra or duplicate field.

A row that fails makes the task's log unreadable (:class:`EventLogUnreadable`), for that
task's stream only. The checks run a page at a time in C (``map`` over msgspec decoders):
~0.5 us per JSON row, ~1.5 us per body (``bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

import msgspec

from bus.messages import bus_encoder
from store.eventlog import EventLogUnreadable


class _EventKey(msgspec.Struct, gc=False):
    """Of an event's JSON, what decides where it goes: its id and its task."""

    event_id: int
    task_id: str


class _Body(msgspec.Struct, tag="event", tag_field="kind", kw_only=True, gc=False):
    """The bus :class:`bus.messages.Event`, its payload kept as the bytes it was.

    Re-encoded, a canonical body gives itself back, byte for byte: the payload need not be
    decoded into dicts to check the rest (it is checked to be one MessagePack value).
    """

    event_id: int
    task_id: str
    timestamp: str
    agent_role: str
    event_type: str
    payload: msgspec.Raw


_key_decoder = msgspec.json.Decoder(_EventKey)
_body_decoder = msgspec.msgpack.Decoder(_Body)
_event_id = attrgetter("event_id")
_task_id = attrgetter("task_id")


def check_json(task_id: str, rows: Sequence[tuple[int, bytes]]) -> None:
    """Raise :class:`EventLogUnreadable` unless every row is its event's JSON object."""
    if not rows:
        return
    datas = [d for _, d in rows]
    try:
        keys = list(map(_key_decoder.decode, datas))
        if not all(map(bytes.isascii, datas)):  # (the common case costs one C pass)
            for d in datas:
                d.decode()
    except ValueError:  # msgspec.DecodeError, UnicodeDecodeError
        keys = []
    if list(map(_event_id, keys)) != [i for i, _ in rows] or set(map(_task_id, keys)) != {task_id}:
        raise EventLogUnreadable(
            task_id, f"event {_first_bad_json(task_id, rows)}'s JSON is not that event's"
        )


def _first_bad_json(task_id: str, rows: Sequence[tuple[int, bytes]]) -> int:
    for i, d in rows:
        try:
            key = _key_decoder.decode(d)
            d.decode()
        except ValueError:
            return i
        if key.event_id != i or key.task_id != task_id:
            return i
    raise AssertionError("a page failed its check but none of its rows")


def check_bodies(task_id: str, got: Sequence[tuple[int, bytes | None, bytes | None]]) -> None:
    """Raise :class:`EventLogUnreadable` unless every body is exactly its event's.

    ``got`` is :meth:`store.Store.read_event_bodies`' rows: ``(id, body, None)``, or
    ``(id, None, json)`` for an event logged before bodies were (its JSON is checked instead).
    """
    ids = [i for i, b, _ in got if b is not None]
    bodies = [b for _, b, _ in got if b is not None]
    try:
        evs = list(map(_body_decoder.decode, bodies))
    except msgspec.DecodeError:
        evs = []
    if (
        list(map(_event_id, evs)) != ids
        or (evs and set(map(_task_id, evs)) != {task_id})
        or list(map(bus_encoder.encode, evs)) != bodies
    ):
        i, why = _first_bad_body(task_id, ids, bodies)
        raise EventLogUnreadable(task_id, f"event {i}'s bus body is {why}")
    check_json(task_id, [(i, d) for i, b, d in got if b is None and d is not None])


def _first_bad_body(task_id: str, ids: list[int], bodies: list[bytes]) -> tuple[int, str]:
    for i, body in zip(ids, bodies, strict=True):
        try:
            ev = _body_decoder.decode(body)
        except msgspec.DecodeError:
            return i, "not an event"
        if ev.event_id != i or ev.task_id != task_id or bus_encoder.encode(ev) != body:
            return i, "not that event's"
    raise AssertionError("a page failed its check but none of its rows")
