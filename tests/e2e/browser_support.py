"""Headless Chromium for the browser tests: installed on demand, driven by Playwright.

Debian's ``chromium`` package is the browser (``playwright install`` would download one, and
this machine has no internet); Playwright for Python only drives it through ``executable_path``.
The browser test modules share their set-up from here: import the fixtures (``stack``, ``api``,
``browser``, ``page``) into the module, as ``from tests.e2e.browser_support import ...``.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from metastream.stack import Stack

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack per test module (shadows conftest's): every test works on its own tasks, and
    starting and stopping a stack per test would double a module's run time."""
    s = Stack(tmp_path_factory.mktemp("browser") / "home")
    s.start()
    yield s
    s.stop()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api, why = ensure_playwright()
    if sync_api is None:
        pytest.skip(f"Playwright for Python is unavailable: {why}")
    chromium, why = ensure_chromium()
    if chromium is None:
        pytest.skip(f"Chromium cannot be installed here: {why}")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # a browser that will not start is an environment problem
        pw.stop()
        pytest.skip(f"Chromium at {chromium} does not start: {exc}")
    yield b
    b.close()
    pw.stop()


class Page:
    """A fresh browser page plus what it reported (page errors, WebSocket URLs)."""

    def __init__(self, browser: Any):
        self.context = browser.new_context(viewport={"width": 1440, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.ws_urls: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("websocket", lambda ws: self.ws_urls.append(ws.url))

    def info(self) -> dict[str, Any]:
        return self.page.evaluate("window.__metastream.info()")

    def wait_js(self, expr: str, timeout: float = 30) -> None:
        self.page.wait_for_function(
            f"() => {{ const i = window.__metastream.info(); return {expr}; }}",
            timeout=timeout * 1000,
        )

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=False)


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.context.close()


def create_from_page(p: Page, url: str, requirement: str, **opts: Any) -> str:
    """Fill and submit the create form; returns the id of the task it opened."""
    pg = p.page
    pg.goto(url + "/")
    pg.fill("#requirement", requirement)
    if opts.get("test_mode"):
        pg.locator("#test-mode").set_checked(True, force=True)  # styled switch: input is hidden
    if opts.get("use_qa"):
        pg.locator("#use-qa").set_checked(True, force=True)
    if "events" in opts:
        pg.click("#synthetic-box summary")
        pg.locator("#synthetic-on").set_checked(True, force=True)
        pg.fill("#synthetic-events", str(opts["events"]))
        pg.fill("#synthetic-rate", str(opts["rate"]))
    pg.click("#create-btn")
    pg.wait_for_url(re.compile(r"#/task/[0-9a-f-]{36}$"))
    return pg.text_content("#t-id") or ""
