"""Frame formats without a server: negotiation, batch framing, MessagePack conversion."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from bus.messages import Event, bus_encoder, event_data_json, ws_frame
from gateway.frames import (
    BATCH_BYTES,
    BATCH_MESSAGES,
    BadFormat,
    Format,
    FrameWriter,
    MsgpackCache,
    msgpack_array_header,
    negotiate,
    seed_to_msgpack,
)
from gateway.wsprotocol import SEND_TEXTS


def test_negotiate_prefers_the_first_known_subprotocol() -> None:
    assert negotiate([], None) == (Format.JSON, None)
    assert negotiate(["chat", "metastream.batch.v9"], None) == (Format.JSON, None)
    assert negotiate(["x", "metastream.msgpack.v1", "metastream.batch.v1"], "json") == (
        Format.MSGPACK,
        "metastream.msgpack.v1",
    )
    assert negotiate([], "msgpack-batch") == (Format.MSGPACK_BATCH, None)
    with pytest.raises(BadFormat, match="Unknown format 'xml'"):
        negotiate([], "xml")


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_msgpack_array_header(n: int) -> None:
    body = msgpack_array_header(n) + b"\xc0" * n  # n nils
    assert msgspec.msgpack.decode(body) == [None] * n


def _event(i: int, pad: int = 10) -> Event:
    return Event(
        event_id=i,
        task_id="t" * 36,
        timestamp="2026-01-01T00:00:00.000Z",
        agent_role="r",
        event_type="MESSAGE",
        payload={"seq": i, "pad": "x" * pad},
    )


def test_seed_to_msgpack_is_the_bus_body() -> None:
    ev = _event(7)
    frame = ws_frame("event", event_data_json(ev))
    assert msgspec.msgpack.decode(seed_to_msgpack(frame)) == msgspec.msgpack.decode(
        bus_encoder.encode(ev)
    )


def test_cache_converts_each_frame_once_and_stays_in_budget() -> None:
    frames = [ws_frame("event", event_data_json(_event(i, 200))) for i in range(100)]
    cache = MsgpackCache(budget_bytes=20_000)
    first = cache.convert(frames[:10])
    again = cache.convert(frames[:10])
    assert first == again and cache.conversions == 10
    cache.convert(frames)
    assert cache._size <= 20_000 and len(cache._map) < 100


class Recorder:
    """The ASGI scope extension the gateway's protocol offers, recording what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

        async def texts(frames: list[bytes]) -> None:
            self.sent += [("text", f) for f in frames]

        async def binaries(frames: list[bytes]) -> None:
            self.sent += [("binary", f) for f in frames]

        self.scope: dict[str, Any] = {
            "extensions": {SEND_TEXTS: {"send_texts": texts, "send_binaries": binaries}}
        }


@pytest.mark.parametrize("fmt", list(Format))
def test_writer_keeps_every_message_in_order_within_the_batch_limits(fmt: Format) -> None:
    frames = [ws_frame("event", event_data_json(_event(i, i % 700))) for i in range(1, 3001)]
    big = ws_frame("event", event_data_json(_event(3001, BATCH_BYTES + 10)))
    ws = Recorder()
    writer = FrameWriter(ws, fmt)  # type: ignore[arg-type]

    async def scenario() -> None:
        await writer.send(frames[:5])  # not held: out at once
        writer.hold()
        await writer.send(frames[5:])
        await writer.send([big])
        await writer.flush()

    asyncio.run(scenario())
    got: list[dict[str, Any]] = []
    for kind, raw in ws.sent:
        assert kind == ("binary" if fmt.binary else "text")
        if fmt.batched:
            assert len(raw) <= BATCH_BYTES + 16 or raw.count(b"event_id") == 1  # one, alone
        if fmt is Format.JSON:
            got.append(json.loads(raw))
        elif fmt is Format.BATCH:
            batch = json.loads(raw)
            assert 1 <= len(batch) <= BATCH_MESSAGES
            got += batch
        else:
            obj = msgspec.msgpack.decode(raw)
            for m in obj if fmt is Format.MSGPACK_BATCH else [obj]:
                got.append({"type": m.pop("kind"), "data": m})
    assert got == [json.loads(f) for f in [*frames, big]]
    if fmt.batched:
        assert 1 < len(ws.sent) < 100  # batched, and more than one frame for ~1 MB
    else:
        assert len(ws.sent) == 3001
