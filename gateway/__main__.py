"""``python -m gateway [--insecure]``: serve the gateway with uvicorn (which owns the signals)."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from bus.curve import InsecureEndpoint, check_endpoints
from core import logs, settings
from core.harden import harden_trusted
from gateway.banner import banner
from gateway.security import bind_problem, describe
from gateway.slowloris import HTTP_PROTOCOL
from gateway.wsprotocol import WS_PROTOCOL
from store import Store, StoreError, migrate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="listen on a non-loopback address without an API token (METASTREAM_INSECURE=1)",
    )
    args = parser.parse_args(argv)
    logs.setup("gateway")
    if args.insecure:
        # Through the environment, so the app factory (which loads settings itself) sees it.
        os.environ["METASTREAM_INSECURE"] = "1"
    harden_trusted()  # umask 077; our environ (tokens) unreadable to same-uid processes
    cfg = settings.load()
    try:
        # The control channel's keys come from this machine's master: it stays on this machine.
        check_endpoints({"METASTREAM_CONTROL": cfg.control}, None, curve_capable=False)
    except InsecureEndpoint as exc:
        print(f"gateway: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    problem = bind_problem(cfg, cfg.host)
    if problem:
        print(f"gateway: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    # The security posture first: it is what an operator must see, before any database chatter.
    logs.announce(f"gateway: {describe(cfg, cfg.host)}", stream=sys.stderr)
    cfg.ensure_dirs()
    try:
        # Checked (and migrated) before uvicorn starts: a bad database is one line, not a
        # lifespan traceback.
        store = Store(cfg.db_url, cfg.events_dir, migrate=cfg.db_migrate)
        try:
            migrated = store.create_schema()
        finally:
            store.close()
    except StoreError as exc:
        print(f"gateway: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if migrated:
        logs.announce(f"gateway: migrated the database schema from {migrated} to {migrate.head()}")
    port = settings.gateway_port(cfg)
    for line in banner(cfg, port).splitlines():
        logs.announce(line, stream=sys.stderr)
    uvicorn.run(
        "gateway.app:create_process_app",  # logs and hardening again in each worker
        factory=True,
        host=cfg.host,
        port=port,
        ws=WS_PROTOCOL,
        http=HTTP_PROTOCOL,  # an import path: workers import it themselves
        ws_ping_interval=cfg.ws_ping_interval,
        ws_ping_timeout=cfg.ws_ping_timeout,
        # Clients have nothing big to send; a larger frame closes the socket with 1009.
        ws_max_size=cfg.ws_max_message_bytes,
        log_level="info",
        # Several processes on one listening socket, each a whole gateway (its own bus
        # subscription, leases under its own id, log cache): see README "Gateway workers".
        workers=cfg.gateway_workers if cfg.gateway_workers > 1 else None,
        # X-Forwarded-For is believed only from configured proxies (none by default): from
        # anyone else it would let one client pose as many and dodge per-address limits.
        proxy_headers=bool(cfg.trusted_proxies),
        forwarded_allow_ips=list(cfg.trusted_proxies) or None,
        # uvicorn's records go through the root handler of core.logs: one format for
        # every process, and tickets in logged URLs are redacted.
        log_config=None,
        # One line per request drowns the banner and the task lines; METASTREAM_ACCESS_LOG=1.
        access_log=cfg.access_log,
    )


if __name__ == "__main__":
    main()
