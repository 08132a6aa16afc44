"""The client's resume parts alone: the cursor, frame decoding, what is worth a retry."""

from __future__ import annotations

import json

import msgspec
import pytest
import websockets
from websockets.frames import Close

from metastream import ws_resume as wr


def event(event_id: int) -> dict[str, object]:
    return {"type": "event", "data": {"event_id": event_id}}


def test_the_cursor_takes_each_event_once_and_in_order() -> None:
    cursor = wr.Cursor(3)
    assert not cursor.admit(event(2)) and not cursor.admit(event(3))  # had them before
    assert cursor.admit(event(4)) and cursor.last == 4
    assert cursor.admit({"type": "state", "data": {"status": "RUNNING"}})  # not an event
    with pytest.raises(wr.Reconnect, match="gap: event 6 after 4"):
        cursor.admit(event(6))
    assert cursor.last == 4
    assert wr.resume_url("ws://h:1", "t", cursor.last) == "ws://h:1/ws/tasks/t?last_event_id=4"


def test_frames_of_every_format_decode_to_the_seed_messages() -> None:
    state = {"kind": "state", "task_id": "t", "status": "RUNNING", "last_event_id": 4, "version": 2}
    batch = msgspec.msgpack.encode([{"kind": "event", "event_id": 1}, state])
    assert wr.decode_frame(batch, wr.MSGPACK_BATCH) == [
        {"type": "event", "data": {"event_id": 1}},
        {"type": "state", "data": {"task_id": "t", "status": "RUNNING"}},  # bus extras dropped
    ]
    one = json.dumps({"type": "event", "data": {"event_id": 1}})
    assert wr.decode_frame(one, None) == [json.loads(one)]
    assert wr.decode_frame(f"[{one}]", wr.JSON_BATCH) == [json.loads(one)]
    with pytest.raises(wr.Reconnect, match="text frame"):
        wr.decode_frame("{}", wr.MSGPACK)
    with pytest.raises(wr.Reconnect, match="undecodable"):
        wr.decode_frame(b"\xc1", wr.MSGPACK)


def closed(code: int) -> websockets.ConnectionClosed:
    return websockets.ConnectionClosedError(Close(code, "why"), None)


def test_refusals_raise_and_lost_connections_are_retried() -> None:
    with pytest.raises(wr.TaskNotFound):
        wr.retry_reason(closed(wr.CLOSE_NOT_FOUND))
    for code in wr.CLOSE_REFUSED:
        with pytest.raises(wr.AuthError, match=str(code)):
            wr.retry_reason(closed(code))
    assert "connection closed" in wr.retry_reason(closed(1011))
    assert wr.retry_reason(wr.Reconnect("gap")) == "gap"
    assert wr.retry_reason(ConnectionRefusedError(111, "refused")).startswith(
        "ConnectionRefusedError"
    )
    assert all(0.15 <= wr.backoff(1) <= 0.25 for _ in range(20))
    assert all(wr.backoff(20) <= 6.25 for _ in range(20))  # capped at 5 s, plus jitter
