"""``python -m gateway``: serve the gateway with uvicorn (which owns the signals)."""

from __future__ import annotations

import uvicorn

from metastream import settings


def main() -> None:
    cfg = settings.load()
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=cfg.host,
        port=settings.gateway_port(cfg),
        ws_ping_interval=cfg.ws_ping_interval,
        ws_ping_timeout=cfg.ws_ping_timeout,
        log_level="info",
    )


if __name__ == "__main__":
    main()
