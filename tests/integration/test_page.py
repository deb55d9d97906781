"""The page in a real browser: Debian's Chromium, headless, driven by Playwright.

Screenshots are saved under tests/artifacts/ (git-ignored).
"""

import csv
import os
import re
from pathlib import Path

import pytest
from conftest import BASE_URL, compose, wait_ready
from playwright.sync_api import expect, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core-4.10.3.min.js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium floods the closed network.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records every value the progress bars take, from the first render on.
RECORD_BARS = """
window.__bars = [];
new MutationObserver((records) => {
  for (const r of records) {
    const bars = r.type === "attributes" ? [r.target]
      : [...r.addedNodes].flatMap(
          (n) => n.querySelectorAll ? [...n.querySelectorAll('[role=progressbar]')] : []);
    for (const bar of bars) {
      if (bar.getAttribute && bar.getAttribute("role") === "progressbar")
        window.__bars.push(Number(bar.getAttribute("aria-valuenow")));
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true,
                      attributeFilter: ["aria-valuenow"]});
"""


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser session on the page; fails the test on any console error
    but those its ``allow_console_errors(pattern)`` marker expects."""
    context = browser.new_context(accept_downloads=True)
    context.add_init_script(RECORD_BARS)
    page = context.new_page()
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(BASE_URL + "/")
    expect(page.get_by_role("status")).to_have_text("Connected")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    allowed = request.node.get_closest_marker("allow_console_errors")
    if allowed:
        errors = [e for e in errors if not re.search(allowed.args[0], e)]
    assert not errors, f"console errors: {errors}"


def bar_values(page):
    return page.evaluate("window.__bars")


def first_task(page):
    return page.locator("li.task").first


def run_simulation(page, steps, step_ms):
    """Start a simulation from the form; returns the new task's progress bar."""
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Step (ms)").fill(str(step_ms))
    page.get_by_role("button", name="Run simulation").click()
    return first_task(page).get_by_role("progressbar")


def test_export_shows_live_progress_then_a_download_with_the_reported_rows(page):
    page.get_by_role("button", name="Export data").click()
    task = first_task(page)
    expect(task.locator(".kind")).to_have_text("export")
    expect(task.get_by_role("link", name="Download")).to_be_visible(timeout=60_000)
    values = bar_values(page)
    assert any(0 < v < 100 for v in values), f"no intermediate values in {values}"
    assert values == sorted(values) and values[-1] == 100
    expect(task.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    snapshot = page.request.get(BASE_URL + "/api/tasks").json()["tasks"][0]
    with page.expect_download() as download:
        task.get_by_role("link", name="Download").click()
    path = download.value.path()
    assert download.value.suggested_filename == snapshot["result"]["filename"]
    with open(path, newline="") as f:
        assert sum(1 for _ in csv.reader(f)) - 1 == snapshot["result"]["rows"] == 1_000_000
    expect(task.locator(".message")).to_have_text("Exported 1,000,000 rows (57.1 MB)")


def test_reload_mid_task_resumes_the_bar_and_completes(page):
    bar = run_simulation(page, steps=40, step_ms=150)
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^([2-9]\d)$"))
    before = int(bar.get_attribute("aria-valuenow"))
    page.reload()
    expect(page.get_by_role("status")).to_have_text("Connected")
    after = bar_values(page)
    assert after and after[0] >= before, f"bar went back from {before} to {after[:1]}"
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=30_000)
    expect(first_task(page).locator(".state")).to_have_text("succeeded")


# While the only web process restarts, a reconnect attempt can reach Nginx with
# nothing behind it (502); Chromium logs each failed handshake as a console error.
@pytest.mark.allow_console_errors(r"^WebSocket connection to .* failed")
def test_web_restart_mid_task_shows_reconnecting_then_completes(page):
    bar = run_simulation(page, steps=60, step_ms=250)
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d?$"))
    compose("restart", "web", timeout=120)
    expect(page.get_by_role("status")).to_have_text("Reconnecting…", timeout=5_000)
    wait_ready()
    expect(page.get_by_role("status")).to_have_text("Connected", timeout=30_000)
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=60_000)
    expect(first_task(page).locator(".state")).to_have_text("succeeded")


def test_cancel_ends_cancelled_without_a_download(page):
    page.get_by_label("Format").select_option("csv.gz")
    page.get_by_role("button", name="Export data").click()
    task = first_task(page)
    expect(task.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", re.compile(r"^[1-9]\d?$"), timeout=30_000
    )
    task.get_by_role("button", name="Cancel").click()
    expect(task.locator(".state")).to_have_text("cancelled", timeout=30_000)
    expect(task.get_by_role("link", name="Download")).to_be_hidden()
    expect(task.get_by_role("button", name="Cancel")).to_be_hidden()


def test_page_passes_an_automated_accessibility_check(page):
    run_simulation(page, steps=3, step_ms=250)
    expect(first_task(page).locator(".state")).to_have_text("succeeded", timeout=30_000)
    # Evaluated over DevTools: the page's CSP (rightly) refuses injected script tags.
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    violations = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]
    assert not violations, violations
