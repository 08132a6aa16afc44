"""``python -m bench.outbox_ab`` runs both trees interleaved and removes its temporary worktree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outbox_ab_prints_its_table_and_leaves_no_worktree() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    argv = [sys.executable, "-m", "bench.outbox_ab", "--ref", "HEAD", "--reps", "1"]
    argv += ["--events", "500", "--lat-events", "50", "--rate", "500"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| events/s (flat out)",
        "| latency p50 ms",
        "| latency p99 ms",
    ]
    assert "rep 1 old" in out.stderr and "rep 1 new" in out.stderr
    worktrees = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "oldoutbox-" not in worktrees
