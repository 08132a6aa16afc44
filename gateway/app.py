"""The FastAPI application; every resource lives in the lifespan, none at module level."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import zmq.asyncio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from bus.client import Publisher
from bus.messages import Ping
from gateway import api, files, ws
from gateway.control import ControlClient, SupervisorUnavailable
from gateway.hub import Hub
from gateway.leases import LeaseKeeper
from metastream import settings as settings_mod
from metastream.settings import Settings
from store import Store

STATIC_DIR = Path(__file__).parent / "static"


def create_app(cfg: Settings | None = None) -> FastAPI:
    """Build the gateway app (uvicorn calls this as a factory)."""
    cfg = cfg or settings_mod.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg.ensure_dirs()
        store = Store(cfg.db_url)
        await anyio.to_thread.run_sync(store.create_schema)
        ctx = zmq.asyncio.Context()
        hub = Hub(cfg.bus_sub, ctx, cfg.ws_queue_size)
        control = ControlClient(cfg.control, ctx)
        control.start()
        publisher = Publisher(cfg.bus_pub, linger_ms=0)
        leases = LeaseKeeper(publisher, hub, cfg.lease_ttl)
        background = [asyncio.create_task(hub.run()), asyncio.create_task(leases.run())]
        app.state.settings = cfg
        app.state.store = store
        app.state.hub = hub
        app.state.control = control
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await control.close()
            publisher.close()
            hub.close()
            ctx.term()
            store.close()

    app = FastAPI(title="metastream", version="0.1.0", lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(files.router)
    app.include_router(ws.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """Gateway liveness plus whether the supervisor answers."""
        control: ControlClient = request.app.state.control
        try:
            await control.request(Ping(), 1.0)
            supervisor = "ok"
        except SupervisorUnavailable as exc:
            supervisor = f"unavailable: {exc}"
        body = {
            "status": "ok",
            "supervisor": supervisor,
            "watched_tasks": len(request.app.state.hub.watched()),
            "watchers": request.app.state.hub.watched(),
        }
        return JSONResponse(body)

    if STATIC_DIR.is_dir():
        # The live web view: static files, no build step (mounted last: API routes win).
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
