"""Settings of the stack as a whole: its home and store, its bus, and operating it.

The first links of the chain that makes :class:`core.settings.Settings` (see there why a chain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from core.settings_base import env

LogFormat = Literal["plain", "json"]


class StackSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the stack keeps its state, and which node this is."""

    home: Annotated[
        Path,
        env(
            "METASTREAM_HOME",
            "all runtime state: `data/` (SQLite), `run/` (ipc sockets, mode 0700), "
            "`tasks/<id>/` (workspaces), `logs/`",
            shown="./var",
        ),
    ]
    db_url: Annotated[
        str,
        env(
            "METASTREAM_DB_URL",
            "the store: `sqlite:///PATH` or `postgresql://USER:PASSWORD@HOST:PORT/DB` (see "
            "Running on PostgreSQL)",
            shown="sqlite:///$METASTREAM_HOME/data/metastream.db",
        ),
    ] = ""
    db_migrate: Annotated[
        bool,
        env(
            "METASTREAM_DB_MIGRATE",
            "`1`: gateways and supervisors migrate the store's schema at start-up (under a "
            "lock); `0`: they refuse an unmigrated database, naming `metastream db upgrade`",
        ),
    ] = True
    node: Annotated[
        str,
        env(
            "METASTREAM_NODE",
            "this supervisor's node name (tasks record which node runs them)",
            shown="host name",
        ),
    ] = ""


class BusSettings(StackSettings, frozen=True, kw_only=True):
    """The bus proxy's endpoints, the supervisor's control channel, CURVE keys."""

    bus_pub: Annotated[
        str,
        env(
            "METASTREAM_BUS_PUB",
            "proxy XSUB endpoint (publishers connect)",
            shown="ipc://$METASTREAM_HOME/run/bus-in.sock",
        ),
    ] = ""
    bus_sub: Annotated[
        str,
        env(
            "METASTREAM_BUS_SUB",
            "proxy XPUB endpoint (**subscribers connect here**)",
            shown="ipc://$METASTREAM_HOME/run/bus-out.sock",
        ),
    ] = ""
    control: Annotated[
        str,
        env(
            "METASTREAM_CONTROL",
            "supervisor request channel",
            shown="ipc://$METASTREAM_HOME/run/control.sock",
        ),
    ] = ""
    control_timeout: Annotated[
        float,
        env(
            "METASTREAM_CONTROL_TIMEOUT",
            "seconds a gateway waits for the supervisor (then 503)",
            gt=0,
        ),
    ] = 5.0
    curve_dir: Annotated[
        str,
        env(
            "METASTREAM_CURVE_DIR",
            "CURVE keys (`python -m bus.curve keygen DIR`); required for non-loopback `tcp://` "
            "bus endpoints",
        ),
    ] = ""


class OperatingSettings(BusSettings, frozen=True, kw_only=True):
    """Operating (README, Operating metastream): Prometheus metrics and the log format."""

    metrics: Annotated[
        bool, env("METASTREAM_METRICS", "`0`: no `/metrics`, no metrics servers, nothing counted")
    ] = True
    metrics_host: Annotated[
        str, env("METASTREAM_METRICS_HOST", "where the supervisor's and the bus's metrics listen")
    ] = "127.0.0.1"
    # 0 = no server. Off by default: two stacks side by side (and tests) would clash on fixed
    # ports; an operator picks them (e.g. 9101, 9102).
    supervisor_metrics_port: Annotated[
        int,
        env("METASTREAM_SUPERVISOR_METRICS_PORT", "supervisor's metrics port (`0` = off)", ge=0),
    ] = 0
    bus_metrics_port: Annotated[
        int, env("METASTREAM_BUS_METRICS_PORT", "bus proxy's metrics port (`0` = off)", ge=0)
    ] = 0
    access_log: Annotated[
        bool, env("METASTREAM_ACCESS_LOG", "`1`: the gateway logs one line per HTTP request")
    ] = False
    log_format: Annotated[
        LogFormat, env("METASTREAM_LOG_FORMAT", "`plain` or `json` (one object per line)")
    ] = "plain"
