"""Settings of the gateway: HTTP and WebSocket serving, and security and limits."""

from __future__ import annotations

from typing import Annotated

from core.settings_base import Secrets, env
from core.settings_tasks import LlmSettings


class GatewaySettings(LlmSettings, frozen=True, kw_only=True):
    """Where the gateway listens and how it serves WebSocket streams."""

    host: Annotated[str, env("HOST", "where the gateway listens")] = "127.0.0.1"
    port: Annotated[
        int,
        env(
            "PORT",
            "the gateway's port, also under `honcho start` (whose own default, 5000, is not taken)",
            ge=0,
            le=65535,
        ),
    ] = 8000
    gateway_workers: Annotated[
        int,
        env(
            "METASTREAM_GATEWAY_WORKERS",
            "gateway processes sharing the port (uvicorn `--workers`; see Gateway workers)",
            ge=1,
        ),
    ] = 1
    # Small on purpose: a connection that is behind is cheaper to serve from the (shared,
    # cached) log than through the bus; see gateway/logreader.py.
    ws_queue_size: Annotated[
        int,
        env(
            "METASTREAM_WS_QUEUE",
            "live messages buffered per connection before it catches up from the log",
            ge=1,
        ),
    ] = 16
    ws_heartbeat_interval: Annotated[
        float,
        env("METASTREAM_WS_HEARTBEAT", "seconds of silence before a `heartbeat` message", gt=0),
    ] = 15.0
    ws_ping_interval: Annotated[
        float,
        env("METASTREAM_WS_PING_INTERVAL", "seconds between WebSocket pings (dead clients)", gt=0),
    ] = 20.0
    ws_ping_timeout: Annotated[
        float, env("METASTREAM_WS_PING_TIMEOUT", "seconds to wait for a pong", gt=0)
    ] = 20.0
    replay_page: Annotated[
        int, env("METASTREAM_REPLAY_PAGE", "events per page of a log replay", ge=1)
    ] = 2000
    ws_max_per_task: Annotated[
        int,
        env(
            "METASTREAM_WS_MAX_PER_TASK",
            "WebSocket connections per task (more: `error` + close `4429`)",
            ge=1,
        ),
    ] = 100
    # With permessage-deflate negotiated, only messages of at least this many bytes are
    # compressed; bench/README.md "Cost curves" has the measurements behind the default.
    ws_deflate_min_bytes: Annotated[
        int,
        env(
            "METASTREAM_WS_DEFLATE_MIN_BYTES",
            "with permessage-deflate negotiated (browsers offer it), only messages this long "
            "or longer are compressed; `0` = all",
            ge=0,
        ),
    ] = 1024


class SecuritySettings(GatewaySettings, frozen=True, kw_only=True):
    """Security and limits (docs/security.md)."""

    api_tokens: Annotated[
        Secrets,
        env(
            "METASTREAM_API_TOKEN",
            "comma-separated API tokens; when set, REST and WebSocket need one (see Security)",
        ),
    ] = Secrets()
    api_token_file: Annotated[
        str,
        env(
            "METASTREAM_API_TOKEN_FILE",
            "a file of API tokens (comma- or line-separated), added to `METASTREAM_API_TOKEN`; "
            "keeps them out of the environment",
        ),
    ] = ""
    ticket_secret: Annotated[
        Secrets,
        env(
            "METASTREAM_TICKET_SECRET", "key of WebSocket tickets", shown="derived from the tokens"
        ),
    ] = Secrets()
    ticket_ttl: Annotated[
        float, env("METASTREAM_TICKET_TTL", "lifetime of a WebSocket ticket in seconds", gt=0)
    ] = 60.0
    insecure: Annotated[
        bool,
        env(
            "METASTREAM_INSECURE",
            "`1` (or `python -m gateway --insecure`): listen on a non-loopback address without "
            "a token",
        ),
    ] = False
    allowed_origins: Annotated[
        tuple[str, ...],
        env(
            "METASTREAM_ALLOWED_ORIGINS",
            "extra origins (comma-separated) allowed for WebSocket upgrades and CORS (same "
            "origin always is)",
        ),
    ] = ()
    allowed_hosts: Annotated[
        tuple[str, ...],
        env(
            "METASTREAM_ALLOWED_HOSTS",
            "`Host` names served besides loopback ones (comma-separated, `*.example.com` for "
            "subdomains; others get `400`: DNS rebinding protection)",
        ),
    ] = ()
    trusted_proxies: Annotated[
        tuple[str, ...],
        env(
            "METASTREAM_TRUSTED_PROXIES",
            "proxies whose `X-Forwarded-For` is believed (comma-separated; default none)",
        ),
    ] = ()
    max_body_bytes: Annotated[
        int, env("METASTREAM_MAX_BODY_BYTES", "request body limit (413)", ge=1)
    ] = 1_048_576
    max_json_depth: Annotated[
        int, env("METASTREAM_MAX_JSON_DEPTH", "request JSON nesting limit (422)", ge=1)
    ] = 32
    max_requirement: Annotated[
        int, env("METASTREAM_MAX_REQUIREMENT", "characters of a requirement (422)", ge=1)
    ] = 20_000
    ws_max_message_bytes: Annotated[
        int,
        env(
            "METASTREAM_WS_MAX_MESSAGE_BYTES", "a client's WebSocket frame limit (close 1009)", ge=1
        ),
    ] = 65_536
    ws_max_per_client: Annotated[
        int,
        env(
            "METASTREAM_WS_MAX_PER_CLIENT", "WebSocket connections per client address (4429)", ge=1
        ),
    ] = 256
    create_rate: Annotated[
        float,
        env(
            "METASTREAM_CREATE_RATE",
            "task creations per second per client address (429 + `Retry-After`; 0 = off)",
            ge=0,
        ),
    ] = 10.0
    create_burst: Annotated[
        int, env("METASTREAM_CREATE_BURST", "burst of task creations per client address", ge=1)
    ] = 100
    head_timeout: Annotated[
        float,
        env(
            "METASTREAM_HEAD_TIMEOUT",
            "seconds a request head may take to arrive, else `408` and close (slowloris; 0 = off)",
            ge=0,
        ),
    ] = 5.0
