"""The wire protocol: decodable by any msgpack library, hostile frames never raise."""

from __future__ import annotations

import msgpack

from bus.client import DecodeFailure, decode_frames
from bus.messages import (
    LEASE_TOPIC,
    PROCESS_TOPIC_PREFIX,
    SYSTEM_TOPIC_PREFIX,
    Event,
    State,
    bus_encoder,
    is_task_id,
    new_task_id,
    state_data,
    topic,
    utcnow,
)
from tests.helpers import SEED_STATE_KEYS


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
    assert set(state_data(st)) == SEED_STATE_KEYS


def test_subscribing_to_a_task_id_matches_that_tasks_topics_only() -> None:
    ids = [new_task_id() for _ in range(300)]
    kinds = ("event", "state", "heartbeat")
    system = [LEASE_TOPIC, b"_sys/supervisor/node-1", PROCESS_TOPIC_PREFIX + b"spawned"]
    topics = [topic(t, k) for t in ids for k in kinds] + system
    for tid in ids:
        assert is_task_id(tid)
        matched = {t for t in topics if t.startswith(tid.encode())}  # what SUBSCRIBE does
        assert matched == {topic(tid, k) for k in kinds}
    assert not any(t.startswith(SYSTEM_TOPIC_PREFIX) for t in topics[: -len(system)])


def test_ids_that_could_prefix_or_extend_another_are_refused() -> None:
    tid = new_task_id()
    for bad in (tid[:-1], tid + "0", tid.upper(), tid.replace("-", ""), "{" + tid + "}", "abc"):
        assert not is_task_id(bad), bad
    assert not is_task_id("_sys/lease" + "x" * 26)


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
