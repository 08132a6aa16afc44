"""Scenarios 4 and 5: task start latency and memory (filled in below)."""

from __future__ import annotations

from bench.common import Ctx
from bench.table import Row


def s4_start(cx: Ctx, rows: list[Row]) -> None:
    pass


def s5_memory(cx: Ctx, rows: list[Row]) -> None:
    pass
