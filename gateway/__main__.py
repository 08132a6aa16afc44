"""``python -m gateway [--insecure]``: serve the gateway with uvicorn (which owns the signals)."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from bus.curve import InsecureEndpoint, check_endpoints
from core import settings
from core.harden import harden_trusted
from gateway.security import bind_problem, describe
from gateway.wsprotocol import WS_PROTOCOL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="listen on a non-loopback address without an API token (METASTREAM_INSECURE=1)",
    )
    args = parser.parse_args(argv)
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
    print(f"gateway: {describe(cfg, cfg.host)}", file=sys.stderr, flush=True)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=cfg.host,
        port=settings.gateway_port(cfg),
        ws=WS_PROTOCOL,
        ws_ping_interval=cfg.ws_ping_interval,
        ws_ping_timeout=cfg.ws_ping_timeout,
        # Clients have nothing big to send; a larger frame closes the socket with 1009.
        ws_max_size=cfg.ws_max_message_bytes,
        log_level="info",
    )


if __name__ == "__main__":
    main()
