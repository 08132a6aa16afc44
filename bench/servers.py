"""The baselines' server processes, built on the gateway's own server stack.

``python -m bench.servers KIND --port P [--bus-sub EP]`` serves one baseline with uvicorn
configured exactly like ``gateway/__main__.py``:

- ``raw``: the raw WebSocket ceiling; sends ``n`` pre-encoded event frames as fast as the
  client reads them (optionally after ``POST /go``, so that a fan-out starts all at once).
- ``bus``: the raw bus forwarder; per connection one SUB socket on the project's XSUB/XPUB
  proxy, each bus body sent as a text frame, no application logic.
- ``seed``: the seed document's design; a background thread with its own event loop emits
  into a per-task ``asyncio.Queue`` through ``run_coroutine_threadsafe``, one handler drains it.

``python -m bench.servers publish SPEC_JSON`` is the bus baseline's task process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bus.messages import Event, event_data_json, topic, utcnow, ws_frame
from gateway.wsprotocol import SEND_TEXTS

PAGE = 2000  # frames per call in the raw ceiling: the gateway's default log page (block)
ROLES = ("ProductManager", "Architect", "ProjectManager", "Engineer")


def pad_for(payload_bytes: int) -> str:
    return "x" * max(0, payload_bytes - 40)  # exactly as runner/task/synthetic.py pads


def event_frame(task_id: str, seq: int, n: int, pad: str) -> bytes:
    """An event frame byte-for-byte in the gateway's format and size."""
    ev = Event(
        event_id=seq,
        task_id=task_id,
        timestamp=utcnow(),
        agent_role=ROLES[(seq - 1) * len(ROLES) // max(n, 1)],
        event_type="MESSAGE",
        payload={"seq": seq, "t": time.time(), "pad": pad},
    )
    return ws_frame("event", event_data_json(ev))


def _connected(task_id: str) -> dict[str, Any]:
    return {"type": "connected", "data": {"task_id": task_id, "message": "connected"}}


def _send_texts(ws: Any) -> Any:
    """The server's many-frames send (gateway.wsprotocol), as the gateway uses it; or None."""
    return ((ws.scope.get("extensions") or {}).get(SEND_TEXTS) or {}).get("send_texts")


# --- raw WebSocket ceiling -----------------------------------------------------------------


def raw_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route, WebSocketRoute

    gate = {"event": asyncio.Event()}

    async def go(_request: Any) -> Response:
        gate["event"].set()
        gate["event"] = asyncio.Event()  # the next round waits again
        return Response("ok")

    async def ws_endpoint(ws: Any) -> None:
        await ws.accept()
        name = ws.path_params["name"]
        n = int(ws.query_params["n"])
        frame = event_frame(name, 1, n, pad_for(int(ws.query_params["bytes"])))
        waiter = gate["event"]
        await ws.send_json(_connected(name))
        if ws.query_params.get("gate") == "1":
            await asyncio.wait_for(waiter.wait(), 60)
        send_texts = _send_texts(ws)
        if send_texts is not None:
            # As the gateway sends what it reads from the log: pages of frames per call.
            for start in range(0, n, PAGE):
                await send_texts([frame] * min(PAGE, n - start))
        else:
            for _ in range(n):
                await ws.send_text(frame.decode())
        await ws.close(1000)

    return Starlette(
        routes=[Route("/go", go, methods=["POST"]), WebSocketRoute("/ws/{name}", ws_endpoint)]
    )


# --- raw bus forwarder ---------------------------------------------------------------------


def bus_app(bus_sub: str) -> Any:
    import zmq
    import zmq.asyncio
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    ctx = zmq.asyncio.Context()

    async def ws_endpoint(ws: Any) -> None:
        await ws.accept()
        name = ws.path_params["name"]
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 200_000)
        sub.setsockopt(zmq.SUBSCRIBE, name.encode())
        sub.connect(bus_sub)
        send_texts = _send_texts(ws)
        try:
            await ws.send_json(_connected(name))
            while True:
                _topic, body = await sub.recv_multipart()
                if body == b"END":
                    break
                if send_texts is not None:
                    await send_texts([body])  # the gateway's send path, one frame at a time
                else:
                    await ws.send_text(body.decode())
            await ws.close(1000)
        finally:
            sub.close(linger=0)

    return Starlette(routes=[WebSocketRoute("/ws/{name}", ws_endpoint)])


def publish(spec: dict[str, Any]) -> None:
    """Publish ``n`` events per topic, round-robin, at ``rate`` in total (0 = flat out)."""
    from bus.client import Publisher

    pub = Publisher(spec["endpoint"])
    topics = [(t, topic(t, "event")) for t in spec["topics"]]
    time.sleep(0.5)  # let the subscriptions reach this fresh PUB socket (slow joiner)
    n, rate, pad = spec["n"], spec["rate"], pad_for(spec["bytes"])
    start = time.monotonic()
    for i in range(n * len(topics)):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        name, frame_topic = topics[i % len(topics)]
        pub.send(frame_topic, event_frame(name, i // len(topics) + 1, n, pad))
    for _, frame_topic in topics:
        pub.send(frame_topic, b"END")
    pub.close(linger_ms=5000)


# --- the seed's design -----------------------------------------------------------------------


@dataclass
class AgentEvent:
    event_id: int
    task_id: str
    timestamp: str
    agent_role: str
    event_type: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "task_id": self.task_id,
            "timestamp": self.timestamp,
            "agent_role": self.agent_role,
            "event_type": self.event_type,
            "payload": self.payload,
        }


class SeedRunner:
    """The seed's MetaGPTRunner, with the synthetic workload in place of MetaGPT."""

    def __init__(self) -> None:
        self._event_queues: dict[str, asyncio.Queue[AgentEvent]] = {}
        self._task_events: dict[str, list[AgentEvent]] = {}
        self._states: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def subscribe_events(self, task_id: str) -> asyncio.Queue[AgentEvent]:
        self._loop = asyncio.get_running_loop()
        return self._event_queues.setdefault(task_id, asyncio.Queue())

    def start_task(self, task_id: str, n: int, rate: float, nbytes: int) -> None:
        self._task_events[task_id] = []
        self._states[task_id] = {
            "task_id": task_id,
            "status": "RUNNING",
            "progress": 0.0,
            "current_agent": None,
            "last_message": None,
        }
        args = (task_id, n, rate, nbytes)
        threading.Thread(target=self._run_task_sync, args=args, daemon=True).start()

    def get_task_state(self, task_id: str) -> dict[str, Any]:
        return dict(self._states[task_id])

    def emitted(self, task_id: str) -> int:
        return len(self._task_events[task_id])

    def _run_task_sync(self, task_id: str, n: int, rate: float, nbytes: int) -> None:
        loop = asyncio.new_event_loop()  # the seed's thread runs its own loop
        try:
            loop.run_until_complete(self._execute(task_id, n, rate, nbytes))
        finally:
            loop.close()

    async def _execute(self, task_id: str, n: int, rate: float, nbytes: int) -> None:
        pad = pad_for(nbytes)
        start = time.monotonic()
        for seq in range(1, n + 1):
            if rate > 0:
                delay = start + (seq - 1) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            role = ROLES[(seq - 1) * len(ROLES) // n]
            self._emit_event(task_id, role, "MESSAGE", {"seq": seq, "t": time.time(), "pad": pad})
            self._states[task_id].update(
                progress=seq / n, current_agent=role, last_message=f"{seq}/{n}"
            )
        self._states[task_id]["status"] = "COMPLETED"

    def _emit_event(self, task_id: str, role: str, etype: str, payload: dict[str, Any]) -> None:
        events = self._task_events[task_id]
        ts = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat() + "Z"
        event = AgentEvent(len(events) + 1, task_id, ts, role, etype, payload)
        events.append(event)
        self._put_event_to_queue(task_id, event)

    def _put_event_to_queue(self, task_id: str, event: AgentEvent) -> None:
        q = self._event_queues.get(task_id)
        if q is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(q.put(event), self._loop)


def seed_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    runner = SeedRunner()

    async def ws_endpoint(ws: Any) -> None:
        await ws.accept()
        task_id = ws.path_params["name"]
        q = ws.query_params
        queue = await runner.subscribe_events(task_id)  # before the start: lose nothing
        runner.start_task(task_id, int(q["n"]), float(q.get("rate", 0)), int(q["bytes"]))
        await ws.send_json(_connected(task_id))
        sent, last_key = 0, None
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=0.5)
                await ws.send_json({"type": "event", "data": event.to_dict()})
                sent += 1
            except TimeoutError:
                pass
            state = runner.get_task_state(task_id)
            # The seed checks the state after every event and sends it when it changed; we
            # compare (status, agent) only, which spares the baseline a state frame per event.
            key = (state["status"], state["current_agent"])
            if key != last_key:
                last_key = key
                await ws.send_json({"type": "state", "data": state})
            if state["status"] == "COMPLETED" and sent >= runner.emitted(task_id):
                break
        await ws.close(1000)

    return Starlette(routes=[WebSocketRoute("/ws/{name}", ws_endpoint)])


def main() -> None:
    if sys.argv[1] == "publish":
        publish(json.loads(sys.argv[2]))
        return
    import uvicorn

    from core import settings
    from gateway.wsprotocol import WS_PROTOCOL

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["raw", "bus", "seed"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bus-sub", default="")
    args = parser.parse_args()
    cfg = settings.load()
    app = {"raw": raw_app, "seed": seed_app}.get(args.kind, lambda: bus_app(args.bus_sub))()
    # The gateway's uvicorn configuration (gateway/__main__.py), nothing more, nothing less.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ws=WS_PROTOCOL,
        ws_ping_interval=cfg.ws_ping_interval,
        ws_ping_timeout=cfg.ws_ping_timeout,
        log_level="info",
    )


if __name__ == "__main__":
    main()
