"""The start-up banner: where the web UI and the CLI are, and which LLM tasks will use."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from core.settings import Settings

# A task that starts before the zygote has imported MetaGPT starts a fresh interpreter and
# imports it itself: ~8 s on a 2-core machine (README, Supervision: Warm start).
COLD_START_S = 10


def llm_line(cfg: Settings) -> str:
    """Which LLM tasks run on, in one line (the host only: a URL may carry credentials)."""
    if not cfg.llm_base_url:
        return (
            "LLM: none configured, every MetaGPT task runs on the offline scripted LLM "
            "(README: Use a real LLM)"
        )
    parts = urlsplit(cfg.llm_base_url)
    host = parts.hostname or "?"
    where = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
    model = cfg.llm_model or "gpt-4o-mini"
    return (
        f"LLM: {where} (model {model}); tasks created with test_mode use the offline scripted LLM"
    )


def cli_path() -> str:
    """How to run the CLI from here: `.venv/bin/metastream` from a clone."""
    entry = Path(sys.executable).with_name("metastream")
    try:
        return os.path.relpath(entry) if entry.is_relative_to(Path.cwd()) else str(entry)
    except ValueError:
        return str(entry)


def banner(cfg: Settings, port: int) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    host = f"[{host}]" if ":" in host else host
    cold = (
        f"first tasks start cold for ~{COLD_START_S} s while MetaGPT loads"
        if cfg.warm
        else f"every MetaGPT task starts cold (~{COLD_START_S} s; METASTREAM_WARM=0)"
    )
    return f"Web UI: http://{host}:{port}/ · CLI: {cli_path()} · {cold}\ngateway: {llm_line(cfg)}"
