"""The web page as a newcomer meets it: unknown ids, cancel, a phone screen (issue 22).

Real stack, headless Chromium (see browser_support); screenshots in ``test-artifacts/``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from metastream.stack import Stack
from tests.e2e import browser_support as bs
from tests.e2e.browser_support import Page, create_from_page
from tests.helpers import create_task, wait_status

# The shared browser set-up (browser_support), as this module's fixtures.
stack, api, browser, page = bs.stack, bs.api, bs.browser, bs.page

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def test_unknown_or_garbage_task_shows_only_not_found(
    stack: Stack, api: httpx.Client, page: Page
) -> None:
    done = create_task(api, requirement="a finished task", synthetic={"events": 40})
    api.post(f"/api/tasks/{done['id']}/run")
    wait_status(api, done["id"], {"COMPLETED"})
    pg = page.page
    pg.goto(f"{stack.url}/#/task/{done['id']}")
    page.wait_js("i && i.status === 'COMPLETED' && i.lastId === 40")
    assert pg.text_content("#t-events") == "40"

    for bad in (UNKNOWN, "not-a-task-%3Cb%3E"):
        pg.evaluate(f"location.hash = '#/task/{bad}'")
        pg.wait_for_function(
            "document.querySelector('#t-requirement').textContent === 'Task not found'"
        )
        pg.wait_for_selector("#task-view[data-state=missing]")
        # Nothing of the previous task, nothing to watch, nothing to cancel.
        assert not pg.is_visible("#t-status")
        assert not pg.is_visible("#cancel-btn") and pg.is_disabled("#cancel-btn")
        assert not pg.is_visible("#timeline") and not pg.is_visible(".stats")
        assert pg.text_content("#t-events") == "0"
        assert "a finished task" not in (pg.text_content("#task-view") or "")
        page.shot("browser-task-not-found")

    # Back to a real task: the view is whole again.
    pg.evaluate(f"location.hash = '#/task/{done['id']}'")
    page.wait_js("i && i.status === 'COMPLETED' && i.lastId === 40")
    assert pg.is_visible("#t-status") and pg.text_content("#t-requirement") == "a finished task"
    assert not page.errors, page.errors


def test_cancel_asks_for_confirmation(stack: Stack, api: httpx.Client, page: Page) -> None:
    task = create_task(api, requirement="cancel me", synthetic={"events": 100_000, "rate": 20})
    pg = page.page
    pg.goto(f"{stack.url}/#/task/{task['id']}")
    page.wait_js("i && i.status === 'RUNNING' && i.lastId > 2")
    asked: list[str] = []

    def answer(accept: bool) -> Any:
        def handle(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    pg.once("dialog", answer(False))
    pg.click("#cancel-btn")
    assert asked and "Cancel this task?" in asked[0] and "cancel me" in asked[0]
    assert api.get(f"/api/tasks/{task['id']}").json()["status"] == "RUNNING"
    assert pg.is_enabled("#cancel-btn")

    pg.once("dialog", answer(True))
    pg.click("#cancel-btn")
    page.wait_js("i.status === 'CANCELLED'")
    assert len(asked) == 2
    assert api.get(f"/api/tasks/{task['id']}").json()["status"] == "CANCELLED"
    page.shot("browser-cancel-confirmed")
    assert not page.errors, page.errors


def test_phone_layout(stack: Stack, browser: Any) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    try:
        p = Page.__new__(Page)
        p.context, p.page, p.errors, p.ws_urls = context, context.new_page(), [], []
        p.page.on("pageerror", lambda exc: p.errors.append(str(exc)))
        task_id = create_from_page(p, stack.url, "a phone-sized task", events=60, rate=0)
        pg = p.page
        p.wait_js("i && i.status === 'COMPLETED'")
        # "Create & watch" brought the task view into the viewport.
        top = pg.evaluate("document.querySelector('#task-view').getBoundingClientRect().top")
        assert -5 <= top < 844 / 2, top
        p.shot("browser-phone-task")

        # No fixed-width columns: every timeline row fits the screen, bodies use its width.
        widths = pg.eval_on_selector_all(
            "#timeline .ev", "els => els.map(e => [e.scrollWidth, e.clientWidth])"
        )
        assert widths and all(sw <= cw + 1 for sw, cw in widths), widths[:5]
        columns = pg.eval_on_selector(
            "#timeline .ev", "e => getComputedStyle(e).gridTemplateColumns"
        )
        assert "92px" not in columns and "76px" not in columns, columns
        body = pg.eval_on_selector("#timeline .ev .ev-body", "e => e.getBoundingClientRect().width")
        assert body > 300, body

        # A long path wraps at most over a few lines, not one character per line.
        deep = "very_long_directory_name/another_rather_long_directory/module_with_long_name.py"
        target = stack.home / "tasks" / task_id / deep
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("print('hello from a deep path')\n")
        pg.click(".tabs [data-tab=files]")
        pg.click(f'.tree button.file[data-path="{deep}"]')
        pg.wait_for_function(
            "document.querySelector('#file-path').textContent.includes('module_with_long_name')"
        )
        box = pg.eval_on_selector(
            "#file-path", "e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height]"
        )
        assert box[0] > 250 and box[1] < 80, box
        p.shot("browser-phone-files")
        assert not p.errors, p.errors
    finally:
        context.close()


def test_artifacts_dir_exists() -> None:
    assert bs.artifacts_dir().is_dir()


def test_download_a_file_and_the_whole_workspace(
    stack: Stack, api: httpx.Client, page: Page
) -> None:
    import io
    import zipfile

    task = create_task(api, requirement="downloads", synthetic={"events": 5})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    ws = stack.home / "tasks" / task["id"]
    (ws / "proj" / "pkg").mkdir(parents=True)
    (ws / "proj" / "pkg" / "game.py").write_text("print('snake')\n")
    (ws / "proj" / "README.md").write_text("# snake\n")
    pg = page.page
    pg.goto(f"{stack.url}/#/task/{task['id']}")
    page.wait_js("i && i.status === 'COMPLETED'")
    pg.click(".tabs [data-tab=files]")
    pg.click('.tree button.file[data-path="proj/pkg/game.py"]')
    pg.wait_for_selector("#file-download:visible")
    with pg.expect_download() as one:
        pg.click("#file-download")
    assert one.value.suggested_filename == "game.py"
    assert Path(one.value.path()).read_text() == "print('snake')\n"
    with pg.expect_download() as whole:
        pg.click("#zip-download")
    assert whole.value.suggested_filename == f"task-{task['id'][:8]}.zip"
    zf = zipfile.ZipFile(io.BytesIO(Path(whole.value.path()).read_bytes()))
    assert sorted(zf.namelist()) == ["proj/README.md", "proj/pkg/game.py"]
    page.shot("browser-downloads")
    assert not page.errors, page.errors


@pytest.mark.metagpt
@pytest.mark.timeout(240)
def test_chronological_view_and_folded_internal_warnings(
    stack: Stack, api: httpx.Client, page: Page
) -> None:
    task = create_task(api, requirement="a snake game", test_mode=True)
    pg = page.page
    pg.goto(f"{stack.url}/#/task/{task['id']}")
    page.wait_js("i && i.status === 'COMPLETED' && i.conn === 'ended'", timeout=200)
    last = page.info()["lastId"]
    pg.evaluate("window.__metastream.expandAll()")

    # MetaGPT's "Message no recipients" is folded: a closed box, its text not even in the DOM.
    internal = pg.locator("#timeline .ev.internal")
    assert internal.count() >= 1
    assert "MetaGPT internal warning" in (internal.first.text_content() or "")
    assert internal.first.locator("details[open]").count() == 0
    assert "sent_from" not in (pg.text_content("#timeline") or "")

    # The chronological view: every event once, in id order, agents interleaved.
    pg.click("#view-chrono")
    assert pg.is_visible("#chrono") and not pg.is_visible("#timeline")
    chunks = pg.eval_on_selector_all("#chrono [data-ids]", "els => els.map(e => e.dataset.ids)")
    ids = [int(x) for chunk in chunks for x in chunk.split()]
    assert ids == list(range(1, last + 1))
    roles = pg.eval_on_selector_all("#chrono .ev", "els => els.map(e => e.dataset.role)")
    assert {"ProductManager", "Architect", "ProjectManager", "Engineer"} <= set(roles)
    switches = sum(1 for a, b in itertools.pairwise(roles) if a != b)
    assert switches >= 4
    page.shot("browser-chronological")
    pg.click("#view-agents")
    assert pg.is_visible("#timeline") and not pg.is_visible("#chrono")
    assert not page.errors, page.errors
