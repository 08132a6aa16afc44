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

A reader gets the rows before the first that fails; a read that begins at it raises
:class:`EventLogUnreadable` (the task's log is unreadable from there, for that task only). The
checks run a page at a time in C (``map`` over msgspec decoders): ~0.5 us per JSON row, ~1 us
per body (``bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter, itemgetter, methodcaller
from typing import TypeVar

import msgspec

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
    """The bus's ``Event`` (``bus.messages``), every field required, the payload as bytes.

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


# A map of the Event's fields and its tag, the tag first: how the bus encodes every Event.
# (The store may not import the bus: tests/store/test_checked.py holds _Body to its fields.)
_BODY_START = bytes([0x80 | (len(_Body.__struct_fields__) + 1)]) + msgspec.msgpack.encode("kind")
_BODY_START += msgspec.msgpack.encode("event")
_starts_as_event = methodcaller("startswith", _BODY_START)

_key_decoder = msgspec.json.Decoder(_EventKey)
_body_decoder = msgspec.msgpack.Decoder(_Body)
_event_id = attrgetter("event_id")
_task_id = attrgetter("task_id")
_first, _second = itemgetter(0), itemgetter(1)


Row = tuple[int, bytes]
BodyRow = tuple[int, bytes | None, bytes | None]
R = TypeVar("R", Row, BodyRow)


def checked_json(task_id: str, rows: list[Row]) -> list[Row]:
    """The rows, each checked to be its event's JSON object; see :func:`_checked`."""
    if not rows:
        return rows
    datas = list(map(_second, rows))
    try:
        keys = list(map(_key_decoder.decode, datas))
        if not all(map(bytes.isascii, datas)):  # (the common case costs one C pass)
            for d in datas:
                d.decode()
    except ValueError:  # msgspec.DecodeError, UnicodeDecodeError
        keys = []
    if list(map(_event_id, keys)) == list(map(_first, rows)) and set(map(_task_id, keys)) == {
        task_id
    }:
        return rows
    return _checked(task_id, rows, _json_fault)


def checked_bodies(task_id: str, got: list[BodyRow]) -> list[BodyRow]:
    """The rows of :meth:`store.Store.read_event_bodies`, checked: ``(id, body, None)``, each
    body exactly its event's, or ``(id, None, json)`` for an event logged before bodies were
    (its JSON is checked instead); see :func:`_checked`."""
    ids = [i for i, b, _ in got if b is not None]
    bodies = [b for _, b, _ in got if b is not None]
    try:
        evs = list(map(_body_decoder.decode, bodies)) if all(map(_starts_as_event, bodies)) else []
    except msgspec.DecodeError:
        evs = []
    if list(map(_event_id, evs)) != ids or (evs and set(map(_task_id, evs)) != {task_id}):
        return _checked(task_id, got, _row_fault)
    older = [(i, d) for i, b, d in got if b is None and d is not None]
    if older and not all(_json_fault(task_id, row) is None for row in older):
        return _checked(task_id, got, _row_fault)
    return got


def _checked(task_id: str, rows: list[R], fault: Callable[[str, R], str | None]) -> list[R]:
    """A page that failed its check, row by row: the rows before the first bad one, so a
    reader still gets every event before it; :class:`EventLogUnreadable` if that is the first.
    """
    for k, row in enumerate(rows):
        why = fault(task_id, row)
        if why:
            if k:
                return rows[:k]
            raise EventLogUnreadable(task_id, f"event {row[0]}'s {why}")
    raise AssertionError("a page failed its check but none of its rows")


def _json_fault(task_id: str, row: Row) -> str | None:
    i, data = row
    try:
        key = _key_decoder.decode(data)
        data.decode()
    except ValueError:
        return "JSON is not that event's"
    if key.event_id != i or key.task_id != task_id:
        return "JSON is not that event's"
    return None


def _row_fault(task_id: str, row: BodyRow) -> str | None:
    i, body, data = row
    if body is None:
        return _json_fault(task_id, (i, data or b""))
    try:
        if not body.startswith(_BODY_START):
            return "bus body is not an event"
        ev = _body_decoder.decode(body)
    except msgspec.DecodeError:
        return "bus body is not an event"
    if ev.event_id != i or ev.task_id != task_id:
        return "bus body is not that event's"
    return None
