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
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.auth import control_client_keys, load_master, trusted_keys
from bus.client import Publisher
from bus.messages import Ping
from core import logs
from core import settings as settings_mod
from core.harden import harden_trusted
from core.metrics import Registry
from core.settings import Settings
from gateway import api, archive, files, gctune, nodes_api, readiness, ws
from gateway.browser import BrowserGuardMiddleware
from gateway.control import ControlClient, SupervisorUnavailable
from gateway.frames import MsgpackCache
from gateway.hub import Hub
from gateway.leases import LeaseKeeper
from gateway.limits import ConnectionCounter, LimitsMiddleware
from gateway.logreader import LogReader
from gateway.metrics import CONTENT_TYPE, GatewayMetrics, GatewayState
from gateway.models import COMMON_RESPONSES
from gateway.rowcache import TaskRowCache
from gateway.security import AuthMiddleware, Guard
from store import Store
from store.eventlog import EventLogUnreadable

STATIC_DIR = Path(__file__).parent / "static"


def create_process_app() -> FastAPI:
    """The app of one gateway process, set up as ``python -m gateway`` sets up its own.

    uvicorn's factory, called in every process that serves: workers
    (``METASTREAM_GATEWAY_WORKERS``) are fresh interpreters (multiprocessing "spawn") that
    inherit neither the log handler (format, redaction: their uvicorn lines were dropped or
    printed raw) nor ``PR_SET_DUMPABLE`` 0 (``execve`` resets it: their environment, with the
    API token, was readable by same-uid processes). Both are idempotent for the single process.
    The garbage collector is tuned here too, once per process (not in tests' in-process apps).
    """
    logs.setup("gateway")
    harden_trusted()
    app = create_app()
    gctune.tune()  # the collector's pauses off the fan-out (gateway/gctune.py); per process
    return app


def create_app(cfg: Settings | None = None) -> FastAPI:
    """Build the gateway app (uvicorn calls this as a factory)."""
    cfg = cfg or settings_mod.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg.ensure_dirs()
        store = Store(cfg.db_url, cfg.events_dir, migrate=cfg.db_migrate)
        await anyio.to_thread.run_sync(store.create_schema)
        ctx = zmq.asyncio.Context()
        hub = Hub(cfg.bus_sub, ctx, cfg.ws_queue_size)
        master = load_master(cfg.home)
        control = ControlClient(cfg.control, ctx, control_client_keys(master))
        control.start()
        # Leases are _sys/ messages: the proxy takes them from trusted keys only.
        publisher = Publisher(cfg.bus_pub, linger_ms=0, keys=trusted_keys(master))
        leases = LeaseKeeper(publisher, hub, cfg.lease_ttl)
        probe = readiness.BusProbe(publisher)
        hub.on_system(probe.topic, probe.heard)
        hub.on_bad_frame = metrics.bad_frame
        hub.on_direct = metrics.sent
        background = [
            asyncio.create_task(hub.run()),
            asyncio.create_task(leases.run()),
            asyncio.create_task(probe.run()),
        ]
        app.state.metrics_state = GatewayState(
            app.state.ws_clients.total, lambda: len(hub.watched()), counters, probe.ok
        )
        unregister = metrics.collect_from(app.state.metrics_state)
        app.state.bus_probe = probe
        app.state.settings = cfg
        app.state.store = store
        app.state.log_reader = LogReader(store, cfg.replay_page)
        app.state.task_rows = TaskRowCache(store)  # connections' quiet polls, shared per task
        app.state.frame_cache = MsgpackCache()  # log rows as MessagePack, shared (frames.py)
        app.state.hub = hub
        app.state.control = control
        try:
            yield
        finally:
            unregister()
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
    metrics = GatewayMetrics(Registry(cfg.metrics))
    app.state.metrics = metrics
    # The last added runs first: Host/Origin checks, CORS answers preflights, then auth, then
    # the input limits (so unauthenticated requests never spend a client's creation budget).
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
    # Outermost: a rebinding page or a cross-site form gets nothing, not even a preflight.
    app.add_middleware(BrowserGuardMiddleware, cfg=cfg, guard=guard, counters=counters)
    app.include_router(api.router, responses=COMMON_RESPONSES)
    app.include_router(files.router, responses=COMMON_RESPONSES)
    app.include_router(archive.router, responses=COMMON_RESPONSES)
    app.include_router(nodes_api.router, responses=COMMON_RESPONSES)
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

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """Whether this gateway can serve (for a load balancer): 200, or 503 with the reasons."""
        state = request.app.state
        body = await readiness.check(state.store, state.control, state.bus_probe)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics (behind the API token when one is set)."""
        if not metrics.registry.enabled:
            return JSONResponse({"detail": "Metrics are off (METASTREAM_METRICS=0)"}, 404)
        state: GatewayState = request.app.state.metrics_state
        state.status_counts = await anyio.to_thread.run_sync(request.app.state.store.status_counts)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    # (path pattern, methods) of the REST routes, for honest 405 answers.
    method_table = [
        (r.path_regex, r.methods or set())
        for router in (api.router, files.router, archive.router, nodes_api.router)
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

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's 422, but one whose echoed input cannot be written (NaN, a lone
        surrogate) is dropped instead of turning the answer into a 500."""
        errors = jsonable_encoder(exc.errors())
        try:
            return JSONResponse({"detail": errors}, status_code=422)
        except (ValueError, UnicodeEncodeError):
            safe = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in errors]
            return JSONResponse({"detail": safe}, status_code=422)

    @app.exception_handler(EventLogUnreadable)
    async def log_unreadable(request: Request, exc: EventLogUnreadable) -> Response:
        """A task's own log file is damaged (it is the task's to write): that task only."""
        return JSONResponse({"detail": str(exc)}, status_code=502)

    if STATIC_DIR.is_dir():
        # The live web view: static files, no build step (mounted last: API routes win).
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
