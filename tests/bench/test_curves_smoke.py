"""The cost curves' smoke test: ``python -m bench.curves --quick`` writes a table and plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.curves import FORMATS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_curves_write_a_table_and_plots(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.curves", "--quick", "--clients", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    points = json.loads((tmp_path / "curves.json").read_text())["points"]
    # Every format on both curves, each with a measured throughput and latency.
    for curve in ("clients", "tasks"):
        got = [p for p in points if p["curve"] == curve]
        assert {p["format"] for p in got} == {label for label, _, _ in FORMATS}, got
        for p in got:
            assert p["delivered_per_s"] and p["p99_ms"] > 0 and p["lost_connections"] == 0, p
            assert p["rss_mib"] > 0 and p["fds"] > 0
    assert "| clients | 1 | seed JSON |" in (tmp_path / "curves.md").read_text()
    for curve in ("clients", "tasks"):
        png = tmp_path / f"curve-{curve}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
