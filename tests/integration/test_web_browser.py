"""The tracker's web page in a real browser: Debian's chromium, driven by Playwright.

One browser session follows a real 200-instance C-MOVE (dcmtk's movescu through the node,
to a destination that refuses five instances with 0xA700) on the list without a reload,
opens the move's page and finds a refused instance's status and reason; then a move whose
AE titles and reason are markup (they come from peers) shows them as text; last, a person
signs in (ui_actions) and presses the move's Retry. Screenshots of the pages go to docs/
for the README. Chromium must be installed (scripts/setup-system):
without it the test fails, it never skips. Playwright only drives /usr/bin/chromium
(never `playwright install`); the flags keep it off the network, which is closed here.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.clock import utc_now
from tests.broker import Broker, private_vhost
from tests.integration.conftest import movescu
from tests.integration.peers import answering_scp, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = "DIMSEBUS_SCREENSHOTS"
"""Where the README's screenshots go (``make screenshots``: docs/); else the test's own folder."""
HOSTILE_AE = '"><svg onload=1>'
HOSTILE_DETAIL = "</li><script>alert(1)</script>"
WAIT_MS = 120_000


@pytest.fixture
def amqp_url(broker: Broker) -> Iterator[str]:
    """A vhost of this test's own: the page lists this test's moves alone, whatever the
    tests before it on this worker moved (the tracker reads the log from its first event)."""
    with private_vhost(broker.url, broker.ctl) as url:
        yield url


TOKEN = "a-token-for-the-browser-test-0123"


async def test_the_page_follows_a_move_live_and_shows_a_refused_instance(
    tmp_path: Path, amqp_url: str, start_node: Any, start_tracker: Any
) -> None:
    _chromium_is_installed()
    shots = Path(os.environ.get(SCREENSHOTS) or tmp_path)
    # given a tracker serving its page, and a node whose destination refuses 5 of 200
    port = free_port()
    await start_tracker(http_port=port, ui_actions=True, ui_token=TOKEN)
    base = f"http://127.0.0.1:{port}"
    refused: set[str] = set()
    with answering_scp(lambda uid: 0xA700 if uid in refused else 0x0000, "ODDSCP") as scp:
        node = await start_node(instances=200, destinations={"ODDSCP": scp})
        refused.update(node.instance_uids[::40])
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                args=CHROMIUM_FLAGS,
                headless=True,
                viewport={"width": 1280, "height": 800},
            )
            try:
                page = browser.pages[0] if browser.pages else await browser.new_page()
                await _follows_the_move(page, base, node, shots)
                await _shows_a_refused_instance(page, refused, shots)
                move_url = page.url
                await _reads_on_a_phone(page, base, shots)
                await _marks_stalled_by_the_clock(page, base)
                await _shows_markup_from_peers_as_text(page, base, amqp_url)
                await _retries_after_signing_in(page, move_url, shots)
            finally:
                await browser.close()


def _chromium_is_installed() -> None:
    assert CHROMIUM.exists(), (
        "Debian's chromium is not at /usr/bin/chromium: run scripts/setup-system "
        "(apt-get install -y chromium)"
    )


async def _follows_the_move(page: Page, base: str, node: Any, shots: Path) -> None:
    # when the list is open before the move starts
    await page.goto(base + "/")
    await expect(page.locator("#live")).to_contain_text("Live:", timeout=WAIT_MS)
    await page.evaluate("window.notReloaded = true")
    assert await page.locator("#moves tbody tr").count() == 0
    move = asyncio.create_task(movescu(node, "ODDSCP"))
    # then the move appears, and its bar reaches 200 of 200, without a reload
    row = page.locator("#moves tbody tr").filter(
        has=page.locator('[data-field="requestor_ae_title"]', has_text="MOVESCU")
    )
    bar = row.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuenow", "200", timeout=WAIT_MS)
    await expect(bar).to_have_attribute("aria-valuemax", "200")
    await expect(row.locator('[data-field="outcome"]')).to_have_text(
        "completed with failures", timeout=WAIT_MS
    )
    await expect(bar).to_have_attribute(
        "aria-valuetext", "195 completed, 0 warning, 5 failed, 0 remaining"
    )
    assert await page.evaluate("window.notReloaded") is True
    await move
    await expect(row.locator('[data-field="source_ae_title"]')).to_have_text(node.settings.ae_title)
    await expect(row.locator('[data-field="destination_ae_title"]')).to_have_text("ODDSCP")
    await page.screenshot(path=str(shots / "moves.png"), full_page=True)
    await row.get_by_role("link").click()


async def _shows_a_refused_instance(page: Page, refused: set[str], shots: Path) -> None:
    # then the move's page lists each refused instance with its status and reason
    await expect(page.get_by_role("heading", name="Failed instances (5)")).to_be_visible()
    uid = sorted(refused)[0]
    line = page.locator("#failed tbody tr").filter(has_text=uid)
    await expect(line).to_contain_text("0xA700")
    await expect(line).to_contain_text("Refused: Out of Resources")
    await expect(line.locator('td[data-label="Reason"]')).to_contain_text(
        "0xA700 Refused: Out of Resources"
    )
    await expect(page.get_by_role("link", name="this move")).to_have_attribute(
        "href", f"/moves/{page.url.rsplit('/', 1)[-1]}?format=json"
    )
    await page.screenshot(path=str(shots / "move.png"), full_page=True)


async def _reads_on_a_phone(page: Page, base: str, shots: Path) -> None:
    # a phone's width: nothing is wider than the screen, each move a card
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(base + "/")
    await expect(page.get_by_role("progressbar").first).to_be_visible()
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    await page.screenshot(path=str(shots / "moves-phone.png"), full_page=False)
    await page.set_viewport_size({"width": 1280, "height": 800})


async def _marks_stalled_by_the_clock(page: Page, base: str) -> None:
    # a running row whose stalls-at time passed turns stalled on the open page (the
    # script checks every 10 s; here it is asked at once)
    await page.goto(base + "/")
    outcome = page.locator('#moves tbody [data-field="outcome"]').first
    await outcome.evaluate(
        "el => { el.dataset.outcome = 'in_progress'; "
        "el.dataset.stallsAt = '2026-01-01T00:00:00+00:00'; }"
    )
    await page.evaluate("markStalled()")
    await expect(outcome).to_have_text("stalled")


async def _shows_markup_from_peers_as_text(page: Page, base: str, amqp_url: str) -> None:
    # when a move whose AE titles and a reason are markup reaches the open list
    await page.goto(base + "/")
    await expect(page.locator("#live")).to_contain_text("Live:", timeout=WAIT_MS)
    await _publish(amqp_url, _hostile_story())
    cell = page.locator('[data-field="requestor_ae_title"]', has_text=HOSTILE_AE)
    # then it is shown as text (the live script), and again as text when served
    await expect(cell).to_have_count(1, timeout=WAIT_MS)
    assert await page.locator("svg[onload]").count() == 0
    await page.reload()
    await expect(cell).to_have_text(HOSTILE_AE)
    assert await page.locator("svg[onload]").count() == 0
    await page.locator("#moves tbody tr").filter(has=cell).get_by_role("link").click()
    await expect(page.locator(".timeline")).to_contain_text(f"C-MOVE-RQ from {HOSTILE_AE}")
    await expect(page.locator("#failed")).to_contain_text(HOSTILE_DETAIL)
    assert await page.locator("script").count() == 1  # the page's own, /static/web.js


async def _retries_after_signing_in(page: Page, move_url: str, shots: Path) -> None:
    # when a person signs in from the move's page (ui_actions) and presses Retry
    await page.goto(move_url)
    await page.locator("#actions").get_by_role("link", name="Sign in").click()
    await page.get_by_label("Token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    await page.locator("#actions").screenshot(path=str(shots / "move-actions.png"))
    await page.get_by_role("button", name="Retry 5 failed instance(s)").click()
    # then the browser's form passed the origin and CSRF checks: the retry was asked
    await expect(page.locator("#actions .notice")).to_contain_text("Asked: the node sends")
    assert page.url == move_url + "?asked=retry"


def _hostile_story() -> list[CloudEvent]:
    """The example move of a node of its own, its requestor and a response's detail markup."""
    story = move_story(
        node_id=f"hostile-{uuid.uuid4().hex[:6]}",
        start=utc_now(),
        ids=iter(uuid.uuid4, None),
        instances=3,
    )
    events: list[CloudEvent] = []
    for event in story:
        data: dict[str, Any] = event.data.model_dump()
        if isinstance(event, ev.MoveRequested):
            data["association"]["peer_ae_title"] = HOSTILE_AE
        if isinstance(event, ev.CStoreResponseMissing):
            data["detail"] = HOSTILE_DETAIL
        events.append(type(event).model_validate({**event.model_dump(), "data": data}))
    return events


async def _publish(amqp_url: str, events: list[CloudEvent]) -> None:
    connection = await connect(amqp_url, "dimsebus-test-hostile")
    async with connection:
        publisher = Publisher(await confirming_channel(connection))
        for event in events:
            await publisher.publish(event)
