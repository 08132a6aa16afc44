"""What a task logged is checked before it leaves the store (it could forge messages)."""

from __future__ import annotations

import json

import msgspec
import pytest

from bus.messages import Event, State, bus_encoder, event_data_json
from store import Store
from store.checked import _BODY_START, _Body, checked_bodies, checked_json
from store.eventlog import EventLogUnreadable

pytestmark = pytest.mark.timeout(60)
TASK = "t-1"
FINAL = {"type": "state", "data": {"task_id": TASK, "status": "COMPLETED", "progress": 1.0}}


def _event(i: int, task_id: str = TASK, **payload: object) -> Event:
    return Event(event_id=i, task_id=task_id, timestamp="ts", agent_role="r", event_type="E",
                 payload=payload or {"seq": i})  # fmt: skip


def _data(i: int, **payload: object) -> bytes:
    return event_data_json(_event(i, **payload))


FORGED_JSON = {
    # Spliced into a batch frame or the REST page's array, this is a second message: a final
    # state the task never reached.
    "a second message": _data(2)[:-1] + b"}},%s" % json.dumps(FINAL).encode()[:-1],
    "another event's id": _data(3),
    "another task's event": event_data_json(_event(2, task_id="x" * 36)),
    "not an object": b"[2]",
    "not JSON": b"{",
    "invalid UTF-8": _data(2, text="\u00e9").replace("\u00e9".encode(), b"\xff"),
    "an id that is not an integer": _data(2).replace(b'"event_id":2', b'"event_id":"2"'),
}


@pytest.mark.parametrize("forged", list(FORGED_JSON))
def test_a_json_row_that_is_not_its_events_is_refused(forged: str) -> None:
    rows = [(1, _data(1)), (2, FORGED_JSON[forged]), (3, _data(3))]
    assert checked_json(TASK, rows) == rows[:1]  # the events before it: still readable
    with pytest.raises(EventLogUnreadable, match="event 2's JSON is not that event's"):
        checked_json(TASK, rows[1:])


def test_the_forged_second_message_is_what_a_batch_would_have_carried() -> None:
    """The case above is a real attack, not a malformed row: spliced, it parses as two."""
    spliced = b"[" + b'{"type":"event","data":' + FORGED_JSON["a second message"] + b"}]"
    assert json.loads(spliced)[1] == FINAL


def test_the_body_check_has_the_bus_events_fields() -> None:
    """The store may not import the bus: its copy of the Event's fields is held to it here."""
    assert _Body.__struct_fields__ == Event.__struct_fields__
    assert bus_encoder.encode(_event(1)).startswith(_BODY_START)


def test_events_as_the_task_logs_them_pass() -> None:
    rows = [(1, _data(1)), (2, _data(2, text="caf\u00e9 \u2603")), (3, _data(3, deep={"a": [1]}))]
    assert checked_json(TASK, rows) == rows
    assert checked_json(TASK, []) == []
    got = [(i, bus_encoder.encode(_event(i)), None) for i in (1, 2)]
    got.append((3, None, _data(3)))  # an older row: its JSON is checked
    assert checked_bodies(TASK, got) == got


@pytest.mark.parametrize(
    "forged",
    ["a state", "another event's id", "another task's event", "a second object", "not MessagePack"],
)
def test_a_body_that_is_not_its_events_is_refused(forged: str) -> None:
    body = {
        "a state": bus_encoder.encode(State(task_id=TASK, status="COMPLETED")),
        "another event's id": bus_encoder.encode(_event(3)),
        "another task's event": bus_encoder.encode(_event(2, task_id="x" * 36)),
        "a second object": bus_encoder.encode(_event(2)) + bus_encoder.encode(_event(3)),
        "not MessagePack": b"\xc1",
    }[forged]
    got = [(1, bus_encoder.encode(_event(1)), None), (2, body, None)]
    assert checked_bodies(TASK, got) == got[:1]
    with pytest.raises(EventLogUnreadable, match="event 2's bus body is not"):
        checked_bodies(TASK, got[1:])


def test_a_duplicate_kind_in_a_body_is_refused() -> None:
    """``{"kind": "event", ..., "kind": "state"}``: a client's decoder keeps the last."""
    body = bus_encoder.encode(_event(1))
    forged = bytes([body[0] + 1]) + body[1:] + msgspec.msgpack.encode("kind") + b"\xa5state"
    with pytest.raises(EventLogUnreadable, match="event 1's bus body is not"):
        checked_bodies(TASK, [(1, forged, None)])


def test_an_older_rows_forged_json_is_refused_on_the_binary_path() -> None:
    good = (1, bus_encoder.encode(_event(1)), None)
    forged = (2, None, FORGED_JSON["a second message"])
    assert checked_bodies(TASK, [good, forged]) == [good]  # the body before it: still read
    with pytest.raises(EventLogUnreadable, match="event 1's JSON is not that event's"):
        checked_bodies(TASK, [(1, None, FORGED_JSON["a second message"].replace(b":2", b":1", 1))])


@pytest.fixture
def store(db_store: Store) -> Store:
    return db_store  # (tests/conftest.py: on each backend)


def test_the_store_reads_only_checked_rows(store: Store) -> None:
    """Every reader (log reader, REST page, supervisor) goes through these checks."""
    store.append_events(TASK, [(1, _data(1)), (2, FORGED_JSON["a second message"])])
    assert store.read_events(TASK, 0, 10) == [(1, _data(1))]  # the rows before it: readable
    assert store.read_event_bodies(TASK, 0, 10) == [(1, None, _data(1))]
    with pytest.raises(EventLogUnreadable, match="event 2's JSON"):
        store.read_events(TASK, 1, 10)
    with pytest.raises(EventLogUnreadable, match="event 2's JSON"):
        store.read_event_bodies(TASK, 1, 10)  # logged without bodies: the JSON is checked
