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
- a bus body is exactly one MessagePack map of an ``Event`` with its row's id and task: not
  another kind, not a second object, no missing, extra or duplicate key.

A row that fails makes the task's log unreadable (:class:`EventLogUnreadable`), for that
task's stream only. The checks run a page at a time in C (``map`` over msgspec decoders):
~0.5 us per JSON row, ~1 us per body (``bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, itemgetter, methodcaller

import msgspec

from bus.messages import Event, bus_encoder
from store.eventlog import EventLogUnreadable


class _EventKey(msgspec.Struct, gc=False):
    """Of an event's JSON, what decides where it goes: its id and its task."""

    event_id: int
    task_id: str


class _Body(
    msgspec.Struct,
    tag="event",
    tag_field="kind",
    kw_only=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """The bus :class:`bus.messages.Event`, every field required, the payload kept as bytes.

    With the map's size and its first entry fixed (:data:`_BODY_START`), a body that decodes
    here has each of the Event's keys exactly once: one missing, unknown or repeated (say a
    second ``kind``, a state's, which a client's decoder would keep) fails. The payload is
    checked to be one MessagePack value, not decoded into dicts: the check is ~1 us a row.
    """

    event_id: int
    task_id: str
    timestamp: str
    agent_role: str
    event_type: str
    payload: msgspec.Raw


assert _Body.__struct_fields__ == Event.__struct_fields__, "store.checked._Body must mirror Event"
# A map of the Event's fields and its tag, the tag first: how the bus encodes every Event.
_BODY_START = bytes([0x80 | (len(Event.__struct_fields__) + 1)]) + bus_encoder.encode("kind")
_BODY_START += bus_encoder.encode("event")
_starts_as_event = methodcaller("startswith", _BODY_START)

_key_decoder = msgspec.json.Decoder(_EventKey)
_body_decoder = msgspec.msgpack.Decoder(_Body)
_event_id = attrgetter("event_id")
_task_id = attrgetter("task_id")
_first, _second = itemgetter(0), itemgetter(1)


def check_json(task_id: str, rows: Sequence[tuple[int, bytes]]) -> None:
    """Raise :class:`EventLogUnreadable` unless every row is its event's JSON object."""
    if not rows:
        return
    datas = list(map(_second, rows))
    try:
        keys = list(map(_key_decoder.decode, datas))
        if not all(map(bytes.isascii, datas)):  # (the common case costs one C pass)
            for d in datas:
                d.decode()
    except ValueError:  # msgspec.DecodeError, UnicodeDecodeError
        keys = []
    if list(map(_event_id, keys)) != list(map(_first, rows)) or set(map(_task_id, keys)) != {
        task_id
    }:
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
        evs = list(map(_body_decoder.decode, bodies)) if all(map(_starts_as_event, bodies)) else []
    except msgspec.DecodeError:
        evs = []
    if list(map(_event_id, evs)) != ids or (evs and set(map(_task_id, evs)) != {task_id}):
        i, why = _first_bad_body(task_id, ids, bodies)
        raise EventLogUnreadable(task_id, f"event {i}'s bus body is {why}")
    check_json(task_id, [(i, d) for i, b, d in got if b is None and d is not None])


def _first_bad_body(task_id: str, ids: list[int], bodies: list[bytes]) -> tuple[int, str]:
    for i, body in zip(ids, bodies, strict=True):
        try:
            if not body.startswith(_BODY_START):
                return i, "not an event"
            ev = _body_decoder.decode(body)
        except msgspec.DecodeError:
            return i, "not an event"
        if ev.event_id != i or ev.task_id != task_id:
            return i, "not that event's"
    raise AssertionError("a page failed its check but none of its rows")
