"""``python -m tests.gateway.wsapp PORT``: a tiny app served with the gateway's WebSocket protocol.

- ``/ws/burst?n=N``: N numbered text frames sent in one loop turn, then close 1000.
- ``/ws/flood?n=N&size=B[&yield_every=K]``: N frames of B bytes sent as fast as ``send``
  returns (yielding to the loop every K frames); ``GET /status`` tells how many sends
  completed and how the loop ended.
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

from gateway.wsprotocol import WS_PROTOCOL

status: dict[str, Any] = {"sent": 0, "outcome": None}


async def burst(ws: WebSocket) -> None:
    await ws.accept()
    for i in range(int(ws.query_params["n"])):
        await ws.send_text(str(i))  # never yields: all of them go out in one write
    await ws.close(1000)


async def flood(ws: WebSocket) -> None:
    await ws.accept()
    n, pad = int(ws.query_params["n"]), "x" * int(ws.query_params["size"])
    every = int(ws.query_params.get("yield_every", 0))
    status.update(sent=0, outcome="running")
    try:
        for i in range(n):
            await ws.send_text(f"{i:08d}{pad}")
            status["sent"] = i + 1
            if every and i % every == 0:
                await asyncio.sleep(0)
        await ws.close(1000)
        status["outcome"] = "done"
    except WebSocketDisconnect as exc:
        status["outcome"] = f"disconnected {exc.code}"


async def get_status(_request: Any) -> JSONResponse:
    return JSONResponse(status)


app = Starlette(
    routes=[
        WebSocketRoute("/ws/burst", burst),
        WebSocketRoute("/ws/flood", flood),
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
