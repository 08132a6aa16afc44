"""The benchmark suite's CI smoke test: ``--quick`` runs and yields every row.

Nothing about speed is asserted (CI machines are noisy); only that every scenario ran and
reported, and that each row has a value or says why not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (scenario, words in the metric, baseline) of every row the suite must produce.
EXPECTED = [
    ("1", "throughput", "raw WebSocket ceiling"),
    ("1", "throughput", "seed design"),
    ("1", "latency p50", "raw bus forwarder"),
    ("1", "latency p99", "raw bus forwarder"),
    ("1", "latency p99", "seed design"),
    ("1", "over the whole stream", "raw bus forwarder"),
    ("2", "fan-out", "raw WebSocket ceiling"),
    ("3", "latency p99", "raw bus forwarder"),
    ("3", "CPU/msg", "raw bus forwarder"),
    ("4", "start synthetic", "cold interpreter, task imports"),
    ("4", "start MetaGPT", "cold MetaGPT interpreter"),
    ("5", "per-task USS", "cold MetaGPT process RSS"),
    ("5", "total PSS", "x cold MetaGPT RSS"),
    ("4b", "event log on", "event log off"),
    ("4b", "event log on PostgreSQL", "event log on SQLite"),
    ("4b", "event log on PostgreSQL", "event log off"),
    ("4b", "PostgreSQL fsync=on", "event log on SQLite"),
    ("4b", "PostgreSQL, task's own role", "stack's role (COPY)"),
    ("1pg", "throughput 1 task", ""),
    ("1pg", "throughput on PostgreSQL vs", "same stack on SQLite"),
    ("1pg", "latency p99", "same stack on SQLite"),
    ("1m", "throughput", "metrics off"),
    ("1m", "latency p99", "metrics off"),
    ("ws", "MetaGPT-sized workspace", "whole workspace each round"),
    ("ws", "+500 files", "whole workspace each round"),
    ("ws", "restore on another node", ""),
]


@pytest.mark.slow
@pytest.mark.metagpt
@pytest.mark.timeout(720)
def test_quick_bench_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json-out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=700,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    for scenario, words, baseline in EXPECTED:
        match = [
            r
            for r in rows
            if r["scenario"] == scenario
            and words in r["metric"]
            and baseline in r["baseline_name"]
            # Scenario 4b's "event log on" is in its PostgreSQL rows' names too.
            and (scenario != "4b" or ("PostgreSQL" in r["metric"]) == ("PostgreSQL" in words))
        ]
        assert len(match) == 1, (scenario, words, baseline, [r["metric"] for r in rows])
    assert len(rows) == len(EXPECTED)
    for r in rows:
        has_value = r["value"]["median"] is not None
        assert has_value or r["note"], f"row without value or reason: {r}"
        if r["baseline"] is not None and has_value:
            assert r["baseline"]["median"] is not None, f"baseline missing: {r}"
    # The table is printed too (CI logs are read by people).
    assert "ratio" in proc.stdout and "met?" in proc.stdout
