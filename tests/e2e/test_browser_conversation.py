"""The web page's conversation thread: send a follow-up and watch run 2 stream in (Chromium)."""

from __future__ import annotations

import httpx
import pytest

from metastream.stack import Stack
from tests.e2e import browser_support as bs
from tests.e2e.browser_support import Page, create_from_page

# The shared browser set-up (browser_support), as this module's fixtures.
stack, api, browser, page = bs.stack, bs.api, bs.browser, bs.page

pytestmark = [pytest.mark.metagpt, pytest.mark.timeout(600)]
RUN_S = 240


def test_a_follow_up_sent_from_the_page_streams_into_the_thread(
    page: Page,
    stack: Stack,
    api: httpx.Client,
) -> None:
    tid = create_from_page(page, stack.url, "a calculator with add and subtract", test_mode=True)
    page.wait_js("i.status === 'COMPLETED'", timeout=RUN_S)
    pg = page.page
    pg.wait_for_selector("#thread .run[data-kind='start'][data-status='COMPLETED']")
    assert pg.is_enabled("#followup-btn")
    pg.fill("#followup-text", "add a high score table")
    pg.click("#followup-btn")
    pg.wait_for_selector(
        "#thread .run[data-kind='follow_up'][data-status='COMPLETED']", timeout=RUN_S * 1000
    )
    final = api.get(f"/api/tasks/{tid}").json()
    assert [r["kind"] for r in final["runs"]] == ["start", "follow_up"]
    page.wait_js(f"i.lastId === {final['last_event_id']}", timeout=30)
    # Run 2 arrived on the page's one WebSocket (?follow=conversation), not a reconnect.
    assert len(page.ws_urls) == 1 and "follow=conversation" in page.ws_urls[0]
    assert "add a high score table" in (pg.text_content("#thread") or "")
    page.shot("browser-conversation")
    assert not page.errors, page.errors
