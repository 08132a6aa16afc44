"""``python -m tests.gateway.wsapp PORT``: a tiny app served with the gateway's WebSocket protocol.

- ``/ws/burst?n=N``: N numbered text frames sent in one loop turn, then close 1000.
- ``/ws/flood?n=N&size=B[&yield_every=K][&via=texts]``: N frames of B bytes sent as fast as
  ``send`` returns (yielding to the loop every K frames; with ``via=texts``, through the
  protocol's ``send_texts`` in pages of 100); ``GET /status`` tells how many sends completed
  and how the loop ended.
- ``/ws/direct?n=N``: N rounds of a ``send_texts`` page then ``write_now`` of one framed
  message in the same loop turn (refused: the page's flush is pending; sent through
  ``send_texts`` instead), then, after the flush, one more ``write_now`` (written); ``GET
  /status`` counts what ``write_now`` wrote and refused.
- ``/ws/mixed?pages=P``: P pages through ``send_texts`` (frames of 5 B, 200 B and 70 kB: every
  length encoding), each followed by one ordinary ``send_text``; then close 1000.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.wsprotocol import SEND_TEXTS, WS_PROTOCOL

status: dict[str, Any] = {"sent": 0, "outcome": None}


async def burst(ws: WebSocket) -> None:
    await ws.accept()
    for i in range(int(ws.query_params["n"])):
        await ws.send_text(str(i))  # never yields: all of them go out in one write
    await ws.close(1000)


def mixed_frame(page: int, k: int) -> bytes:
    return f"{page:05d}-{k:03d}-".encode() + b"y" * (5, 200, 70_000)[k % 3]


async def mixed(ws: WebSocket) -> None:
    await ws.accept()
    ext = ws.scope["extensions"][SEND_TEXTS]
    send_texts = ext["send_binaries" if ws.query_params.get("binary") else "send_texts"]
    for page in range(int(ws.query_params["pages"])):
        await send_texts([mixed_frame(page, k) for k in range(10)])
        await ws.send_text(f"page {page} done")
    await ws.close(1000)


async def flood(ws: WebSocket) -> None:
    await ws.accept()
    n, pad = int(ws.query_params["n"]), "x" * int(ws.query_params["size"])
    every = int(ws.query_params.get("yield_every", 0))
    send_texts = None
    if ws.query_params.get("via") == "texts":
        send_texts = ws.scope["extensions"][SEND_TEXTS]["send_texts"]
    status.update(sent=0, outcome="running")
    try:
        for i in range(0, n, 100 if send_texts else 1):
            if send_texts is not None:
                await send_texts([f"{j:08d}{pad}".encode() for j in range(i, min(n, i + 100))])
                status["sent"] = min(n, i + 100)
            else:
                await ws.send_text(f"{i:08d}{pad}")
                status["sent"] = i + 1
            if every and i % every == 0:
                await asyncio.sleep(0)
        await ws.close(1000)
        status["outcome"] = "done"
    except WebSocketDisconnect as exc:
        status["outcome"] = f"disconnected {exc.code}"
    except OSError as exc:  # send_texts reports a gone client as uvicorn does
        status["outcome"] = f"disconnected ({type(exc).__name__})"


async def direct(ws: WebSocket) -> None:
    from gateway.wsprotocol import frame_header

    await ws.accept()
    ext = ws.scope["extensions"][SEND_TEXTS]
    send_texts, write_now = ext["send_texts"], ext["write_now"]
    status.update(direct=0, refused=0)
    for i in range(int(ws.query_params["n"])):
        await send_texts([f"{i}-a".encode(), f"{i}-b".encode()])
        for text, big in ((f"{i}-c", False), (f"{i}-d", True)):
            data = text.encode() + (b"y" * 70_000 if big else b"")
            if write_now(frame_header(0x81, len(data)) + data):
                status["direct"] += 1
            else:
                status["refused"] += 1
                await send_texts([data])
            await asyncio.sleep(0)  # the turn ends: the protocol's flush runs
            await asyncio.sleep(0)
    await ws.close(1000)


async def get_status(_request: Any) -> JSONResponse:
    return JSONResponse(status)


app = Starlette(
    routes=[
        WebSocketRoute("/ws/burst", burst),
        WebSocketRoute("/ws/flood", flood),
        WebSocketRoute("/ws/mixed", mixed),
        WebSocketRoute("/ws/direct", direct),
        Route("/status", get_status),
    ]
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        ws=os.environ.get("WSAPP_WS", WS_PROTOCOL),
        log_level="warning",
    )
