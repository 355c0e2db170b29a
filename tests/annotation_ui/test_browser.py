"""A real browser (Playwright driving Debian's Chromium, headless) against the running app.

Needs /usr/bin/chromium (``scripts/install_browser.sh``); skipped without it unless
WORKBENCH_REQUIRE_BROWSER=1. Screenshots go to test-artifacts/annotation_ui/.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import polars as pl
import pytest

import workbench
from workbench import assign

from conftest import ARTIFACTS  # noqa: E402  (tests/annotation_ui is on sys.path under pytest)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail("WORKBENCH_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing: run scripts/install_browser.sh")
        pytest.skip("/usr/bin/chromium is missing (run scripts/install_browser.sh); set WORKBENCH_REQUIRE_BROWSER=1 to fail instead")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def login(browser, url, name, password):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(url + "/")
    page.locator("input[type=password]").wait_for(timeout=30_000)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.keyboard.press("Enter")
    page.locator("#wb-btn-left").wait_for(timeout=30_000)
    page.wait_for_function("() => document.querySelector('#wb-progress-text') !== null", timeout=30_000)
    return page


def total_labelled(page) -> int:
    text = page.locator("#wb-progress-text").inner_text()
    return int(re.search(r"in all:\s*(\d+)", text).group(1))


def test_label_five_with_the_keyboard_then_undo(browser, shared_server):
    page = login(browser, shared_server.url, "ann4", shared_server.logins["ann4"])
    page.screenshot(path=str(ARTIFACTS / "annotate.png"), full_page=True)
    for i, key in enumerate(["1", "2", "3", "4", "1"], start=1):
        before = page.locator("#wb-prompt").inner_html() + page.locator("#wb-left").inner_html()
        page.locator("body").click(position={"x": 5, "y": 5})  # focus outside any text box
        page.keyboard.press(key)
        page.wait_for_function(f"() => /in all:\\s*<b>{i}<\\/b>/.test(document.querySelector('#wb-progress-text').innerHTML)", timeout=30_000)
        assert page.locator("#wb-prompt").inner_html() + page.locator("#wb-left").inner_html() != before or i == 5
    assert total_labelled(page) == 5
    page.keyboard.press("u")
    page.wait_for_function("() => /in all:\\s*<b>4<\\/b>/.test(document.querySelector('#wb-progress-text').innerHTML)", timeout=30_000)
    assert "Undone" in page.locator("#wb-status").inner_text()
    page.screenshot(path=str(ARTIFACTS / "after-undo.png"), full_page=True)
    store = workbench.open(shared_server.db)
    events = store.events(annotator_id="ann4")
    assert events.filter(pl.col("kind") == "label").height == 5 and events.filter(pl.col("kind") == "retract").height == 1
    live = store.live().filter(pl.col("annotator_id") == "ann4")
    assert live.height == 4 and live["shown_left"].is_not_null().all()
    # keys 1..4 meant left/right/tie/both_bad; the retracted one was the last "1"
    order = events.filter(pl.col("kind") == "label").sort("event_id")
    expected = [order["shown_left"][0], "b" if order["shown_left"][1] == "a" else "a", "tie", "both_bad"]
    assert order["label"].to_list()[:4] == expected
    store.close()
    page.close()


def test_annotator_cannot_reach_the_admin_view(browser, shared_server):
    page = login(browser, shared_server.url, "ann5", shared_server.logins["ann5"])
    assert page.get_by_role("tab", name="Admin").count() == 0
    assert page.locator("#wb-admin-refresh").count() == 0 or not page.locator("#wb-admin-refresh").is_visible()
    page.screenshot(path=str(ARTIFACTS / "annotator-no-admin.png"), full_page=True)
    page.close()
    admin = login(browser, shared_server.url, "admin1", shared_server.logins["admin1"])
    admin.get_by_role("tab", name="Admin").click()
    admin.locator("#wb-admin-refresh").click()
    admin.wait_for_function("() => document.querySelectorAll('#wb-admin-annotators table tr, #wb-admin-annotators [role=row]').length > 1", timeout=30_000)
    time.sleep(1.0)
    admin.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
    admin.close()


def test_admin_view_shows_the_diagnostics_report(browser, shared_server):
    """The admin view shows the same report `workbench diagnose` writes, in a sandboxed frame."""
    store = workbench.open(shared_server.db)
    pairs = assign.pool(store).head(8)
    for annotator in ("ann7", "ann8"):
        for row in pairs.iter_rows(named=True):
            store.add_label(row["prompt_id"], row["response_a_id"], row["response_b_id"], "a", annotator,
                            shown_left="a", client_token=f"diag-{annotator}-{row['pair_id']}")
    version = store.snapshot("diag-v1")
    store.close()
    admin = login(browser, shared_server.url, "admin1", shared_server.logins["admin1"])
    admin.get_by_role("tab", name="Admin").click()
    admin.locator("#wb-admin-refresh").click()
    admin.wait_for_function("() => document.querySelectorAll('#wb-admin-annotators table tr, #wb-admin-annotators [role=row]').length > 1", timeout=30_000)
    time.sleep(1.0)  # the version list follows the refresh; the newest version is picked
    admin.locator("#wb-admin-diagnose").click()
    frame = admin.locator("#wb-admin-report iframe")
    frame.wait_for(timeout=60_000)
    assert frame.get_attribute("sandbox") == ""
    body = admin.frame_locator("#wb-admin-report iframe").locator("h1")
    assert body.inner_text(timeout=30_000) == "Diagnostics: diag-v1"
    assert "Findings, worst first" in admin.frame_locator("#wb-admin-report iframe").locator("body").inner_text()
    assert "diag-v1" in admin.locator("#wb-admin-findings").inner_text()
    frame.scroll_into_view_if_needed()
    admin.wait_for_timeout(500)
    frame.screenshot(path=str(ARTIFACTS / "admin-diagnostics-report.png"))
    admin.screenshot(path=str(ARTIFACTS / "admin-diagnostics.png"), full_page=True)
    admin.close()
    runs = workbench.open(shared_server.db).runs(version.name, kind="diagnostics")
    assert runs.height == 1 and runs["status"][0] == "completed"


def test_hostile_response_runs_nothing_and_loads_nothing(browser, shared_server):
    store = workbench.open(shared_server.db)
    hostile = store.responses().filter(pl.col("text").str.contains("onerror"))
    pair = assign.pool(store).filter(pl.col("response_a_id").is_in(hostile["response_id"].implode()) | pl.col("response_b_id").is_in(hostile["response_id"].implode()))
    pair_id = pair["pair_id"][0]
    with assign._write(store) as conn:  # lease that pair to ann6, so the page shows it
        assign._lease(conn, "ann6", pair_id, "pair", "a" if pair["response_a_id"][0] in hostile["response_id"].to_list() else "b", time.time(), 600)
    store.close()
    page = login_watch(browser, shared_server)
    left = page.locator("#wb-left")
    assert "<script>" in left.inner_text() and "onerror" in left.inner_text()  # shown as text
    page.wait_for_timeout(1000)
    assert page.evaluate("() => window.__pwned === undefined")
    for sel in ("#wb-left script", "#wb-left img", "#wb-left [onerror]", "#wb-left a[href^='javascript']", "#wb-right script"):
        assert page.locator(sel).count() == 0, sel
    # the javascript: links are not links at all; clicking where they are runs nothing
    page.locator("#wb-left").get_by_text("click me", exact=False).first.click()
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__pwned === undefined")
    assert "print('<b>not bold</b>')" in page.locator("#wb-left pre code").first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "hostile.png"), full_page=True)
    assert not page.dialogs and not [u for u in page.requests if "198.51.100.7" in u]
    page.close()


def login_watch(browser, shared_server):
    """Log in as ann6, recording dialogs and every request the page makes."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.dialogs, page.requests = [], []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(shared_server.url + "/")
    page.locator("input[type=password]").wait_for(timeout=30_000)
    page.locator("input[type=text]").first.fill("ann6")
    page.locator("input[type=password]").fill(shared_server.logins["ann6"])
    page.keyboard.press("Enter")
    page.locator("#wb-left .wb-panel").wait_for(timeout=30_000)
    return page
