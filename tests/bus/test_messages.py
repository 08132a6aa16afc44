"""The wire protocol: decodable by any msgpack library, hostile frames never raise."""

from __future__ import annotations

import msgpack

from bus.client import DecodeFailure, decode_frames
from bus.messages import (
    Event,
    State,
    bus_encoder,
    is_task_id,
    new_task_id,
    state_data,
    topic,
    utcnow,
)


def test_bus_body_is_a_plain_msgpack_map_with_websocket_fields() -> None:
    tid = new_task_id()
    ev = Event(
        event_id=3,
        task_id=tid,
        timestamp=utcnow(),
        agent_role="Engineer",
        event_type="MESSAGE",
        payload={"message": "hi"},
    )
    body = msgpack.unpackb(bus_encoder.encode(ev))
    assert body == {
        "kind": "event",
        "event_id": 3,
        "task_id": tid,
        "timestamp": ev.timestamp,
        "agent_role": "Engineer",
        "event_type": "MESSAGE",
        "payload": {"message": "hi"},
    }
    assert topic(tid, "event") == f"{tid}/event".encode()


def test_state_data_is_exactly_the_seed_fields() -> None:
    st = State(task_id=new_task_id(), status="RUNNING", progress=0.5, last_event_id=9, version=4)
    assert set(state_data(st)) == {
        "task_id",
        "status",
        "progress",
        "current_agent",
        "last_message",
        "started_at",
        "completed_at",
    }


def test_task_ids_are_never_prefixes_of_each_other() -> None:
    ids = [new_task_id() for _ in range(1000)]
    assert all(is_task_id(i) for i in ids)
    assert len({len(i) for i in ids}) == 1  # same length: no id can prefix another
    assert not is_task_id("abc") and not is_task_id("_sys/lease" + "x" * 26)


def test_hostile_frames_are_reported_not_raised() -> None:
    tid = new_task_id()
    other = new_task_id()
    good = bus_encoder.encode(State(task_id=tid, status="RUNNING"))
    cases = [
        [b"only-one-frame"],
        [topic(tid, "state"), b"\xc1\xff random"],
        [topic(tid, "state"), good[: len(good) // 2]],  # truncated
        [topic(tid, "state"), msgpack.packb({"kind": "state", "nope": 1})],
        [topic(tid, "state"), msgpack.packb({"kind": "unknown", "task_id": tid})],
        [topic(other, "state"), good],  # claims another task's id
        [topic(tid, "state"), good, b"extra"],
    ]
    for frames in cases:
        _tid, msg = decode_frames(frames)
        assert isinstance(msg, DecodeFailure), frames
    _tid, msg = decode_frames([topic(tid, "state"), good])
    assert isinstance(msg, State) and msg.task_id == tid
