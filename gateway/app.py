"""The FastAPI application; every resource lives in the lifespan, none at module level."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import zmq.asyncio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.auth import control_client_keys, load_master, trusted_keys
from bus.client import Publisher
from bus.messages import Ping
from core import settings as settings_mod
from core.settings import Settings
from gateway import api, files, ws
from gateway.control import ControlClient, SupervisorUnavailable
from gateway.hub import Hub
from gateway.leases import LeaseKeeper
from gateway.limits import ConnectionCounter, LimitsMiddleware
from gateway.logreader import LogReader
from gateway.models import COMMON_RESPONSES
from gateway.security import AuthMiddleware, Guard
from store import Store
from store.eventlog import EventLogUnreadable

STATIC_DIR = Path(__file__).parent / "static"


def create_app(cfg: Settings | None = None) -> FastAPI:
    """Build the gateway app (uvicorn calls this as a factory)."""
    cfg = cfg or settings_mod.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg.ensure_dirs()
        store = Store(cfg.db_url, cfg.events_dir)
        await anyio.to_thread.run_sync(store.create_schema)
        ctx = zmq.asyncio.Context()
        hub = Hub(cfg.bus_sub, ctx, cfg.ws_queue_size)
        master = load_master(cfg.home)
        control = ControlClient(cfg.control, ctx, control_client_keys(master))
        control.start()
        # Leases are _sys/ messages: the proxy takes them from trusted keys only.
        publisher = Publisher(cfg.bus_pub, linger_ms=0, keys=trusted_keys(master))
        leases = LeaseKeeper(publisher, hub, cfg.lease_ttl)
        background = [asyncio.create_task(hub.run()), asyncio.create_task(leases.run())]
        app.state.settings = cfg
        app.state.store = store
        app.state.log_reader = LogReader(store, cfg.replay_page)
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
    # Rejections of hostile or over-limit input, by kind (shown by /healthz).
    counters: Counter[str] = Counter()
    guard = Guard(cfg, counters)
    app.state.guard = guard
    app.state.counters = counters
    app.state.ws_clients = ConnectionCounter(cfg.ws_max_per_client)
    # The last added runs first: CORS answers preflights, then auth, then the input limits (so
    # that unauthenticated requests never spend a client's task-creation budget).
    app.add_middleware(LimitsMiddleware, cfg=cfg, counters=counters)
    app.add_middleware(AuthMiddleware, guard=guard)
    if cfg.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.rstrip("/") for o in cfg.allowed_origins],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.include_router(api.router, responses=COMMON_RESPONSES)
    app.include_router(files.router, responses=COMMON_RESPONSES)
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
        hub: Hub = request.app.state.hub
        watched = hub.watched()
        body: dict[str, object] = {
            "status": "ok",
            "supervisor": supervisor,
            "auth": guard.enabled,
            "watched_tasks": len(watched),
            "ws_connections": request.app.state.ws_clients.total(),
            "counters": {"bus_dropped_frames": hub.dropped_frames, **counters},
        }
        if not guard.enabled:
            body["watchers"] = watched  # task ids: only when anyone may list tasks anyway
        return JSONResponse(body)

    # (path pattern, methods) of the REST routes, for honest 405 answers.
    method_table = [
        (r.path_regex, r.methods or set())
        for router in (api.router, files.router)
        for r in router.routes
        if isinstance(r, APIRoute)
    ]

    @app.exception_handler(StarletteHTTPException)
    async def allow_every_method(request: Request, exc: StarletteHTTPException) -> Response:
        """405s list every method of the path (Starlette names only its first route's)."""
        if exc.status_code == 405:
            path = request.url.path
            methods: set[str] = set().union(*(m for rx, m in method_table if rx.match(path)))
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(EventLogUnreadable)
    async def log_unreadable(request: Request, exc: EventLogUnreadable) -> Response:
        """A task's own log file is damaged (it is the task's to write): that task only."""
        return JSONResponse({"detail": str(exc)}, status_code=502)

    if STATIC_DIR.is_dir():
        # The live web view: static files, no build step (mounted last: API routes win).
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
