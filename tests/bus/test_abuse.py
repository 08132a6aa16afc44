"""A rogue publisher floods the bus with junk: nothing crashes, the junk is counted, and a client
of the targeted task still receives exactly its events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import zmq
import zmq.asyncio

from bus import auth
from bus.messages import LEASE_TOPIC, Event, State, bus_encoder, new_task_id, topic
from core import settings
from metastream.stack import Stack
from tests.helpers import collect, create_task, poll_for


def task_socket(ctx: zmq.Context, home: Path, endpoint: str, task_id: str) -> zmq.Socket:
    """An XPUB connected to the bus with ``task_id``'s own key (what that task holds)."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    keys = auth.task_keys(auth.load_master(home), task_id)
    sock.curve_secretkey, sock.curve_publickey = keys.secret, keys.public
    sock.curve_serverkey = keys.server
    sock.connect(endpoint)
    return sock


@contextlib.contextmanager
def rogue_task(s: Stack, task_id: str) -> Iterator[zmq.Socket]:
    """The task's own bus socket in a hostile hand (see task_socket), closed afterwards.

    An XPUB rather than a PUB: it hears the subscriptions forwarded to publishers, so a test
    knows when what it sends will reach the gateway instead of being dropped at the source.
    """
    cfg = settings.load(s.env)
    ctx = zmq.Context()
    rogue = task_socket(ctx, cfg.home, cfg.bus_pub, task_id)
    try:
        yield rogue
    finally:
        rogue.close()
        ctx.term()


async def gateway_listens(rogue: zmq.Socket, task_id: str) -> None:
    """Wait (20 s at most) until the gateway's subscription to the task reaches ``rogue``."""
    async with asyncio.timeout(20):
        while True:
            try:
                if rogue.recv(zmq.NOBLOCK) == b"\x01" + task_id.encode():
                    return
            except zmq.Again:
                await asyncio.sleep(0.02)


def _junk(task_id: str, rnd: random.Random) -> list[list[bytes]]:
    """One round of hostile multipart messages aimed at ``task_id``."""
    valid = bus_encoder.encode(
        Event(event_id=1, task_id=task_id, timestamp="t", agent_role="r", event_type="e")
    )
    other = new_task_id()
    claim = bus_encoder.encode(
        Event(event_id=2, task_id=other, timestamp="t", agent_role="r", event_type="e")
    )
    t_event, t_state, t_beat = (topic(task_id, k) for k in ("event", "state", "heartbeat"))
    return [
        [rnd.randbytes(rnd.randint(1, 300))],  # one frame of noise
        [t_event, rnd.randbytes(rnd.randint(0, 300))],  # random body
        [t_event, valid[: rnd.randint(1, len(valid) - 1)]],  # truncated MessagePack
        [t_event, msgpack.packb({"kind": "event", "task_id": task_id, "event_id": "x"})],
        [t_state, msgpack.packb({"kind": "state", "task_id": task_id, "status": 7})],
        [t_beat, msgpack.packb({"kind": "heartbeat", "task_id": task_id})],
        [t_event, msgpack.packb({"kind": "nope", "task_id": task_id})],
        [t_event, msgpack.packb([1, 2, 3])],
        [t_event, claim],  # a frame claiming another task's id
        [t_event, valid, b"extra"],  # three frames
        [LEASE_TOPIC, rnd.randbytes(40)],  # the supervisor's topics too
        [task_id.encode(), b"\xc1"],  # msgpack's never-used byte
    ]


def test_rogue_publisher_flood(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory()
    n = 400
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": n, "rate": 80})
        tid = task["id"]
        rnd = random.Random(6)
        sent = 0

        # The task's own key, as a hostile task holds it: the proxy forwards its frames for
        # its own topics, and the consumers must survive them.
        async def flood(rogue: zmq.Socket) -> None:
            nonlocal sent
            await gateway_listens(rogue, tid)
            for _ in range(400):
                for frames in _junk(tid, rnd):
                    rogue.send_multipart(frames)
                    sent += 1
                await asyncio.sleep(0.01)  # spread it over the task's life
            rogue.send_multipart([topic(tid, "event"), os.urandom(8 * 1024 * 1024)])

        async def scenario(rogue: zmq.Socket):  # type: ignore[no-untyped-def]
            good = asyncio.create_task(collect(s.ws_url, tid, timeout=90))
            await flood(rogue)
            return await good

        with rogue_task(s, tid) as rogue:
            rogue.setsockopt(zmq.SNDHWM, 0)
            got = asyncio.run(scenario(rogue))
        assert got.event_ids == list(range(1, n + 1)) and got.close_code == 1000
        assert got.of("state")[-1]["status"] == "COMPLETED"
        health = api.get("/healthz").json()
        assert health["supervisor"] == "ok"
        # Most junk reached the gateway while it watched the task, and each was counted.
        assert health["counters"]["bus_dropped_frames"] > sent // 2, (health, sent)
        # Still fully working afterwards.
        after = create_task(api, synthetic={"events": 5})
        assert asyncio.run(collect(s.ws_url, after["id"], timeout=30)).event_ids == [1, 2, 3, 4, 5]
    for name in ("bus", "supervisor", "gateway"):
        assert s.procs[name].poll() is None, f"{name} died: {s.log(name)[-2000:]}"
    poll_for(lambda: "dropped a bad bus frame" in s.log("supervisor"), 10, what="supervisor log")


def test_curve_bus_admits_only_key_holders(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from bus import curve
    from bus.client import AsyncSubscriber, Publisher
    from bus.proxy import Proxy
    from metastream.stack import free_port

    keys = tmp_path / "keys"
    curve.keygen(keys)
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proxy = Proxy(front, back, keys)
    proxy.start()
    monkeypatch.setenv(curve.CURVE_ENV, str(keys))
    tid = new_task_id()
    ev = Event(event_id=1, task_id=tid, timestamp="t", agent_role="r", event_type="e")

    async def scenario() -> tuple[list[object], list[bytes]]:
        zctx = zmq.asyncio.Context()
        trusted = AsyncSubscriber(back, zctx)  # a CURVE client with the deployment's key
        trusted.subscribe([tid])
        outsider = zctx.socket(zmq.SUB)  # no keys: the handshake never completes
        outsider.setsockopt(zmq.SUBSCRIBE, b"")
        outsider.connect(back)
        pub = Publisher(front, linger_ms=0)
        got: list[object] = []
        heard: list[bytes] = []
        try:
            async with asyncio.timeout(10):
                while not got:  # publish until the subscription has propagated
                    pub.publish(tid, ev)
                    try:
                        async with asyncio.timeout(0.1):
                            got.append((await trusted.recv())[1])
                    except TimeoutError:
                        continue
            pub.publish(tid, ev)
            with contextlib.suppress(TimeoutError):  # the trusted one got it: plenty of time
                async with asyncio.timeout(0.5):
                    heard.append(await outsider.recv())
        finally:
            pub.close()
            trusted.close()
            outsider.close(linger=0)
            zctx.term()
        return got, heard

    try:
        got, heard = asyncio.run(scenario())
    finally:
        proxy.stop()
    assert got == [ev] and heard == []
    # Without keys, a public endpoint is refused (the proxy and every client).
    with pytest.raises(curve.InsecureEndpoint, match="CURVE"):
        curve.check_endpoints({"METASTREAM_BUS_SUB": "tcp://0.0.0.0:5555"}, None, True)
    with pytest.raises(curve.InsecureEndpoint, match="no CURVE"):
        curve.check_endpoints({"METASTREAM_CONTROL": "tcp://10.0.0.1:5555"}, keys, False)
    curve.check_endpoints({"METASTREAM_BUS_SUB": "tcp://127.0.0.1:5555"}, None, True)
    monkeypatch.delenv(curve.CURVE_ENV)
    with pytest.raises(curve.InsecureEndpoint):
        Publisher("tcp://192.0.2.1:5555")


def test_a_forged_final_state_does_not_end_a_stream(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s: Stack = stack_factory()
    n = 200
    with httpx.Client(base_url=s.url, timeout=30) as api:
        task = create_task(api, synthetic={"events": n, "rate": 100})
        tid = task["id"]
    # The task itself forges its end: the proxy drops it (the outcome is the supervisor's).
    forged = bus_encoder.encode(State(task_id=tid, status="COMPLETED", progress=1.0))

    async def scenario(rogue: zmq.Socket):  # type: ignore[no-untyped-def]
        good = asyncio.create_task(collect(s.ws_url, tid, timeout=60))
        await gateway_listens(rogue, tid)
        for _ in range(20):
            rogue.send_multipart([topic(tid, "state"), forged])
            await asyncio.sleep(0.05)
        return await good

    with rogue_task(s, tid) as rogue:
        got = asyncio.run(scenario(rogue))
    # The stream went on to the real end: every event, then the true final state.
    assert got.event_ids == list(range(1, n + 1)) and got.close_code == 1000
    assert got.of("state")[-1]["status"] == "COMPLETED"
    assert got.of("state")[-1]["completed_at"] is not None
