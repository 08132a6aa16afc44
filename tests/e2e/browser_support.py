"""Headless Chromium for the browser tests: installed on demand, driven by Playwright.

Debian's ``chromium`` package is the browser (``playwright install`` would download one, and
this machine has no internet); Playwright for Python only drives it through ``executable_path``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

PLAYWRIGHT_PIN = "playwright==1.65.2"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root in a container; the sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes tabs
]


def _run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    try:
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return p.returncode == 0, (p.stdout + p.stderr)[-2000:]


def find_chromium() -> str | None:
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def ensure_chromium() -> tuple[str | None, str]:
    """The Chromium binary, installing Debian's package if needed; else (None, why)."""
    found = find_chromium()
    if found:
        return found, ""
    if shutil.which("apt-get") is None:
        return None, "Chromium is not installed and apt-get is not available"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and shutil.which("sudo") is None:
        return None, "Chromium is not installed and we are not root (no sudo) to apt-get it"
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    ok, out = _run(install, 600)
    if not ok:
        # The package lists may be missing or stale: refresh them once, then try again.
        _run([*sudo, "apt-get", "update"], 300)
        ok, out = _run(install, 600)
    found = find_chromium()
    return (found, "") if found else (None, f"apt-get install chromium failed: {out}")


def ensure_playwright() -> tuple[ModuleType | None, str]:
    """``playwright.sync_api``, pip-installing the pinned version into this venv if needed."""
    try:
        return importlib.import_module("playwright.sync_api"), ""
    except ImportError:
        pass
    _, out = _run([sys.executable, "-m", "pip", "install", "-q", PLAYWRIGHT_PIN], 600)
    importlib.invalidate_caches()
    try:
        return importlib.import_module("playwright.sync_api"), ""
    except ImportError as exc:
        return None, f"pip install {PLAYWRIGHT_PIN} failed ({exc}): {out}"


def artifacts_dir() -> Path:
    """``test-artifacts/`` at the repository root, where screenshots go."""
    path = Path(__file__).resolve().parents[2] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
