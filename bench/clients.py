"""The one WebSocket client every measurement uses, run in its own processes.

``python -m bench.clients SPEC_JSON`` opens ``spec["urls"]`` (one connection each), prints
``READY`` once every connection got its first ``ready_messages`` messages (1: ``connected``,
the subscription is live; 2: also the ``state`` a task that has not ended gets next, so the
gateway has set the connection up and it is live), reads until it has
``expect`` events per connection, the server closes, or ``timeout`` passes, then writes the
results as JSON to ``spec["out"]`` and prints ``RESULT``. The client is kept lean so that it
is not what we measure: uvloop, no JSON parsing; an event is recognised by its frame prefix,
and in latency mode only the payload's ``"t"`` (emit time, Unix seconds) is sliced out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

EVENT_PREFIX = '{"type":"event"'
MSGPACK_EVENT = b"\xa4kind\xa5event"  # how a MessagePack event map starts (fixstr key, value)
# The frame formats a client may ask for (gateway/frames.py), by subprotocol.
SUBPROTOCOLS = {
    "json": None,
    "batch": "metastream.batch.v1",
    "msgpack": "metastream.msgpack.v1",
    "msgpack-batch": "metastream.msgpack.batch.v1",
}


def _emit_times(msg: str | bytes, fmt: str) -> list[float]:
    """The payload ``"t"`` of every event in one frame (latency mode only)."""
    if isinstance(msg, bytes):
        import msgspec

        obj = msgspec.msgpack.decode(msg)
        maps = obj if isinstance(obj, list) else [obj]
        return [m["payload"]["t"] for m in maps if m.get("kind") == "event"]
    out = []
    at = msg.find(EVENT_PREFIX)
    while at >= 0:
        i = msg.find('"t":', at + 40) + 4
        j = msg.find(",", i)
        out.append(float(msg[i : j if j > 0 else msg.find("}", i)]))
        at = msg.find(EVENT_PREFIX, i)
    return out


async def _one_lean(url: str, spec: dict[str, Any], on_ready: Any) -> dict[str, Any]:
    """As :func:`_one`, through :class:`bench.leanws.LeanConnection` (no deflate)."""
    from bench.leanws import LeanConnection

    expect, latency = spec["expect"], spec["latency"]
    fmt = spec.get("format", "json")
    sub = SUBPROTOCOLS[fmt]
    text = fmt in ("json", "batch")
    marker = EVENT_PREFIX.encode() if text else MSGPACK_EVENT
    res: dict[str, Any] = {"events": 0, "first": None, "last": None, "ready": None, "error": None}
    emit: list[float] = []
    recv: list[float] = []
    live_only = bool(latency and spec.get("live_only"))
    count = [spec.get("ready_messages", 1), 0, 0]  # messages before ready, events, live events

    def on_message(msg: bytes) -> bool:
        if count[0]:  # "connected": the subscription is live (then "state": set up)
            count[0] -= 1
            if not count[0]:
                res["ready"] = time.time()
                on_ready()
            return False
        k = (1 if msg.startswith(marker) else 0) if fmt == "json" else msg.count(marker)
        if not k:
            return False
        now = time.time()
        if not count[1]:
            res["first"] = now
        count[1] += k
        res["last"] = now
        if latency:
            times = _emit_times(msg.decode() if text else msg, fmt)
            emit.extend(times)
            recv.extend([now] * len(times))
            if live_only:  # only events emitted once ready count toward ``expect``
                count[2] += sum(1 for t in times if t >= res["ready"])
        return (count[2] if live_only else count[1]) >= expect

    conn = None
    try:
        conn = await asyncio.wait_for(LeanConnection.connect(url, sub, on_message), 30)
        got = conn.opened.result()
        if got != sub:
            raise RuntimeError(f"asked for {sub}, got {got}")
        await conn.closed
    except Exception as exc:  # a failed connection is reported, not fatal to the others
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            conn.close()
    res["events"] = count[1]
    if latency:
        res["emit"], res["recv"] = emit, recv
    return res


async def _one(url: str, spec: dict[str, Any], on_ready: Any) -> dict[str, Any]:
    if spec.get("lean") and not spec.get("deflate"):
        return await _one_lean(url, spec, on_ready)
    from websockets.asyncio.client import connect

    expect, latency = spec["expect"], spec["latency"]
    fmt = spec.get("format", "json")
    sub = SUBPROTOCOLS[fmt]
    res: dict[str, Any] = {"events": 0, "first": None, "last": None, "ready": None, "error": None}
    emit: list[float] = []
    recv: list[float] = []
    n = 0
    live, live_only = 0, bool(latency and spec.get("live_only"))
    try:
        async with connect(
            url,
            max_size=None,
            ping_interval=None,
            open_timeout=30,
            compression="deflate" if spec.get("deflate") else None,
            subprotocols=[sub] if sub else None,  # type: ignore[list-item]
        ) as ws:
            if ws.subprotocol != sub:
                raise RuntimeError(f"asked for {sub}, got {ws.subprotocol}")
            for _ in range(spec.get("ready_messages", 1)):
                await ws.recv()  # "connected": the subscription is live (then "state": set up)
            res["ready"] = time.time()
            on_ready()
            async for msg in ws:
                if fmt == "json":
                    if not msg.startswith(EVENT_PREFIX):
                        continue
                    k = 1
                elif isinstance(msg, bytes):
                    k = msg.count(MSGPACK_EVENT)
                else:
                    k = msg.count(EVENT_PREFIX)
                if not k:
                    continue
                now = time.time()
                if n == 0:
                    res["first"] = now
                n += k
                res["last"] = now
                if latency:
                    times = _emit_times(msg, fmt)
                    emit += times
                    recv += [now] * len(times)
                    if live_only:  # only events emitted once ready count toward ``expect``
                        live += sum(1 for t in times if t >= res["ready"])
                if (live if live_only else n) >= expect:
                    break
    except Exception as exc:  # a failed connection is reported, not fatal to the others
        res["error"] = f"{type(exc).__name__}: {exc}"
    res["events"] = n
    if latency:
        res["emit"], res["recv"] = emit, recv
    return res


async def _main(spec: dict[str, Any]) -> list[dict[str, Any]]:
    urls = spec["urls"]
    pending = len(urls)

    def on_ready() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            print("READY", flush=True)

    async def guarded(url: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(spec["timeout"]):
                return await _one(url, spec, on_ready)
        except TimeoutError:
            return {"events": 0, "error": "timeout"}

    return await asyncio.gather(*(guarded(u) for u in urls))


def main() -> None:
    import uvloop

    spec = json.loads(sys.argv[1])
    results = uvloop.run(_main(spec))
    # Through a file: the event loop may leave stdout non-blocking, and a large line written
    # to a full pipe would then be cut short.
    with open(spec["out"], "w") as f:
        json.dump(results, f)
    print("RESULT", flush=True)


# --- the orchestrator's side -------------------------------------------------------------


class ClientGroup:
    """Client connections spread over several processes (a single one would be the limit)."""

    def __init__(
        self,
        urls: list[str],
        expect: int,
        *,
        latency: bool = False,
        procs: int = 1,
        timeout: float = 60.0,
        deflate: bool = False,
        fmt: str = "json",
        lean: bool = False,
        ready_messages: int = 1,
        live_only: bool = False,
    ) -> None:
        self.timeout = timeout
        self._procs: list[subprocess.Popen[str]] = []
        self._lines: list[queue.Queue[str | None]] = []
        nproc = max(1, min(procs, len(urls)))
        self._dir = tempfile.TemporaryDirectory(prefix="msb-clients-")
        self._outs = [Path(self._dir.name) / f"{k}.json" for k in range(nproc)]
        for k in range(nproc):
            spec = {
                "urls": urls[k::nproc],
                "expect": expect,
                "latency": latency,
                "timeout": timeout,
                "deflate": deflate,
                "format": fmt,
                "lean": lean,
                "ready_messages": ready_messages,
                "live_only": live_only,
                "out": str(self._outs[k]),
            }
            p = subprocess.Popen(
                [sys.executable, "-m", "bench.clients", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            q: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(p, q), daemon=True).start()
            self._procs.append(p)
            self._lines.append(q)

    def _next(self, k: int, prefix: str, deadline: float) -> str:
        while True:
            try:
                line = self._lines[k].get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"client process {k}: no {prefix} in time") from None
            if line is None:
                raise RuntimeError(f"client process {k} exited without {prefix}")
            if line.startswith(prefix):
                return line

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for k in range(len(self._procs)):
            self._next(k, "READY", deadline)

    def results(self) -> list[dict[str, Any]]:
        """Every connection's result (waits at most the group's timeout plus a margin)."""
        deadline = time.monotonic() + self.timeout + 15
        out: list[dict[str, Any]] = []
        for k in range(len(self._procs)):
            self._next(k, "RESULT", deadline)
            out += json.loads(self._outs[k].read_text())
        return out

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self._dir.cleanup()

    def __enter__(self) -> ClientGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(p: subprocess.Popen[str], q: queue.Queue[str | None]) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        q.put(line.rstrip("\n"))
    q.put(None)


# --- summaries -----------------------------------------------------------------------------


def throughput(results: list[dict[str, Any]]) -> float:
    """Delivered events per second over all connections, first to last event received."""
    got = [r for r in results if r.get("events")]
    if not got:
        raise RuntimeError(f"no events received: {[r.get('error') for r in results][:3]}")
    total = sum(r["events"] for r in got)
    span = max(r["last"] for r in got) - min(r["first"] for r in got)
    return total / span if span > 0 else float("nan")


def latencies_ms(
    results: list[dict[str, Any]], since: float = 0.0, until: float = float("inf")
) -> list[float]:
    """Emit-to-receive latencies of events emitted in [since, until] and after the client was
    ready (earlier ones are a replay from the log, not live latency)."""
    out: list[float] = []
    for r in results:
        lo = max(since, r.get("ready") or 0.0)
        for e, v in zip(r.get("emit", ()), r.get("recv", ()), strict=True):
            if lo <= e <= until:
                out.append((v - e) * 1000.0)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        raise RuntimeError("no latency samples")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100.0 * len(s)) - 1))]


def errors(results: list[dict[str, Any]]) -> list[str]:
    return [r["error"] for r in results if r.get("error")]


if __name__ == "__main__":
    main()
