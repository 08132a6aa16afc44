"""Frame formats without a server: negotiation, batch framing, MessagePack conversion."""

from __future__ import annotations

import asyncio
import json
import random
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
    _LoggedEvent,
    events_to_msgpack,
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


def _varied(i: int) -> Event:
    """Events whose payloads hold every JSON type, nesting, escapes and non-ASCII text."""
    payloads: list[dict[str, Any]] = [
        {"seq": i, "t": 1764590400.123456, "pad": "x" * 200},
        {"nested": {"a": [1, 2.5, None, True, False, 'é\u2603"\\\n'], "b": {}}, "neg": -(2**40)},
        {"big": 2**63 - 1, "small": -(2**63), "f": 1e-300, "zero": 0.0, "list": []},
        {},
    ]
    ev = _event(i)
    ev.payload = payloads[i % len(payloads)]
    ev.agent_role = "Ingénieur" if i % 2 else "Engineer"
    return ev


def test_page_conversion_is_byte_identical_to_the_row_path_and_the_bus_body() -> None:
    events = [_varied(i) for i in range(1, 41)]
    frames = [ws_frame("event", event_data_json(ev)) for ev in events]
    page = events_to_msgpack(frames)
    assert page == [seed_to_msgpack(f) for f in frames]
    assert page == [bus_encoder.encode(ev) for ev in events]  # what the live path forwards
    assert events_to_msgpack([]) == []


def test_a_page_with_a_row_of_another_shape_is_converted_row_by_row() -> None:
    frames = [ws_frame("event", event_data_json(_varied(i))) for i in range(1, 6)]
    odd = json.loads(event_data_json(_event(6)))
    frames.append(ws_frame("event", json.dumps({**odd, "extra": [1, "two"]}).encode()))
    short = {k: v for k, v in odd.items() if k != "payload"}  # no payload: not defaulted
    frames.append(ws_frame("event", json.dumps(short).encode()))
    frames.append(ws_frame("event", json.dumps({**odd, "event_id": "7"}).encode()))
    page = events_to_msgpack(frames)
    assert page == [seed_to_msgpack(f) for f in frames]
    assert msgspec.msgpack.decode(page[5])["extra"] == [1, "two"]  # kept, not dropped
    assert "payload" not in msgspec.msgpack.decode(page[6])


def test_the_strict_page_struct_mirrors_the_bus_event() -> None:
    assert _LoggedEvent.__struct_fields__ == Event.__struct_fields__
    assert _LoggedEvent.__struct_config__.tag == Event.__struct_config__.tag


def _reference_cuts(sizes: list[int], final: bool) -> tuple[list[int], int]:
    """The batch cutting rule, message by message (the writer does it by bisection)."""
    cuts, batch, size = [], 0, 0
    for n in sizes:
        if batch and (size + n > BATCH_BYTES or batch >= BATCH_MESSAGES):
            cuts.append(batch)
            batch, size = 0, 0
        batch += 1
        size += n + 1
    if not final and size < BATCH_BYTES and batch < BATCH_MESSAGES:
        return cuts, batch
    return [*cuts, batch], 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("final", [True, False])
def test_batches_are_cut_as_the_message_by_message_rule_cuts_them(seed: int, final: bool) -> None:
    rnd = random.Random(seed)
    top = [10, 200, 3000, BATCH_BYTES + 5, 64, 1][seed]
    sizes = [rnd.randint(1, top) for _ in range(rnd.randint(1, 5000))]
    units = [b"x" * n for n in sizes]
    ws = Recorder()
    writer = FrameWriter(ws, Format.MSGPACK_BATCH)  # type: ignore[arg-type]
    writer._units = list(units)
    asyncio.run(writer._write_batches(final))
    want_cuts, kept = _reference_cuts(sizes, final)
    got = [raw for _, raw in ws.sent]
    assert len(got) == len(want_cuts)
    at = 0
    for raw, k in zip(got, want_cuts, strict=True):
        assert raw == msgpack_array_header(k) + b"".join(units[at : at + k])
        at += k
    assert writer._units == units[at:] and len(writer._units) == kept
    assert writer._size == sum(n + 1 for n in sizes[at:])
