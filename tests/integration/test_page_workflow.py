"""A workflow on the page (issue 33), in Chromium: one bar for the whole, its stage and
time left moving, its children in a windowed list that reads only the rows in view,
and cancel reaching every child. The demo kind ``primes`` splits a count into shards,
one child task each, reporting ten times with a pause of ``slow_ms`` in between.

The browser and page fixtures are test_page.py's (a console error fails the test).
"""

import re

import test_page
from conftest import BASE_URL, TERMINAL, wait_until
from playwright.sync_api import expect
from test_page import AXE, first_task, pick, seconds, stat

# test_page.py's fixtures, found by pytest by these names.
browser = test_page.browser
context_options = test_page.context_options
page = test_page.page

# 30 shards of ~3 s on the test stack's 12 worker slots: three waves, ~10 s in all.
SHARDS = 30
SLOW_MS = 300


def run_primes(page, shards=SHARDS, slow_ms=SLOW_MS, fail_shard=None):
    """Start ``primes`` from its form; returns the new task's item."""
    form = pick(page, "primes")
    form.field("limit").fill("300000")
    form.field("shards").fill(str(shards))
    form.field("slow_ms").fill(str(slow_ms))
    if fail_shard is not None:
        form.field("fail_shard").fill(str(fail_shard))
    form.get_by_role("button", name="Start").click()
    return first_task(page)


def children_of(page, task_id, limit=100):
    """Every child's snapshot, read over the API in the page's session."""
    url = f"{BASE_URL}/api/tasks/{task_id}/children?offset=0&limit={limit}"
    return page.request.get(url).json()["children"]


def newest_id(page):
    """The id of the newest task, once the page's POST has made one."""
    tasks = wait_until(
        lambda: page.request.get(BASE_URL + "/api/tasks").json()["tasks"],
        15,
        interval=0.2,
        what="the task to be created",
    )
    return tasks[0]["id"]


def test_a_workflow_shows_one_bar_its_stage_and_a_falling_time_left(page):
    task = run_primes(page)
    bar = task.get_by_role("progressbar", name="primes progress")
    expect(stat(task, "Stage")).to_have_text("Counting", timeout=15_000)
    left = stat(task, "Time left")
    expect(left).to_have_text(re.compile(r"\d+ s"), timeout=15_000)
    # Measured in the weighted percent: the counts are finished children.
    expect(stat(task, "Rate")).to_have_text(re.compile(r"^\d+\.\d %/s$"))
    expect(stat(task, "Progress")).to_have_text(re.compile(rf"^\d+ % · \d+ of {SHARDS} shards$"))
    readings, values = [], []
    for _ in range(10):
        if left.is_visible():
            readings.append(seconds(left.inner_text()))
        values.append(int(bar.get_attribute("aria-valuenow")))
        page.wait_for_timeout(400)
    assert len(readings) >= 4 and readings[-1] < readings[0], readings
    assert values == sorted(values) and values[-1] > values[0], values
    # One bar: the children are not on the page until asked for.
    expect(task.get_by_role("progressbar")).to_have_count(1)
    expect(task.locator(".state")).to_have_text("succeeded", timeout=60_000)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(stat(task, "Stage")).to_be_hidden()
    expect(stat(task, "Time left")).to_be_hidden()


def test_a_workflows_children_expand_into_a_list_of_the_rows_in_view(page):
    reads = []
    page.on("request", lambda r: "/children?" in r.url and reads.append(r.url))
    task = run_primes(page)
    expect(stat(task, "Stage")).to_have_text("Counting", timeout=15_000)
    show = task.get_by_role("button", name=f"Show {SHARDS} children")
    show.click()
    hide = task.get_by_role("button", name=f"Hide {SHARDS} children")
    expect(hide).to_have_attribute("aria-expanded", "true")
    children = task.get_by_role("list", name="Children")
    rows = children.get_by_role("listitem")
    expect(rows.first).to_contain_text(re.compile(r"^1\s*(queued|running|succeeded)"))
    expect(rows.first.get_by_role("progressbar", name="Child 1 progress")).to_be_visible()
    # Windowed: fewer rows than children, each saying where it stands in all of them.
    assert 0 < rows.count() < SHARDS, rows.count()
    assert rows.first.get_attribute("aria-setsize") == str(SHARDS)
    # Live while open: the children's own messages move.
    expect(rows.filter(has_text=re.compile(r"\d+ primes so far")).first).to_be_visible(
        timeout=15_000
    )
    # Scrolled to the end: the last rows are read and drawn, still only a window.
    children.evaluate("el => { el.scrollTop = el.scrollHeight; }")
    last = children.locator(f'[aria-posinset="{SHARDS}"]')
    expect(last).to_contain_text(re.compile(rf"^{SHARDS}\s*(queued|running|succeeded)"))
    assert 0 < rows.count() < SHARDS, rows.count()
    # Only the rows in view (and a few either side) are read, a page at a time.
    limits = [int(re.search(r"limit=(\d+)", url).group(1)) for url in reads]
    assert len(limits) >= 2 and max(limits) < SHARDS, reads
    expect(task.locator(".state")).to_have_text("succeeded", timeout=60_000)
    # Once the workflow ends, the rows in view are read once more: their final state.
    expect(last).to_contain_text("succeeded", timeout=10_000)
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    violations = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]
    assert not violations, violations
    hide.click()
    expect(children).to_be_hidden()
    expect(show).to_have_attribute("aria-expanded", "false")


def test_cancelling_a_workflow_cancels_its_children(page):
    task = run_primes(page, slow_ms=600)
    expect(stat(task, "Stage")).to_have_text("Counting", timeout=15_000)
    task_id = newest_id(page)
    task.get_by_role("button", name=f"Show {SHARDS} children").click()
    rows = task.get_by_role("list", name="Children").get_by_role("listitem")
    expect(rows.first).to_contain_text("running", timeout=15_000)
    task.get_by_role("button", name="Cancel").click()
    expect(task.locator(".state")).to_have_text("cancelled", timeout=30_000)
    # Every child ends, the unfinished ones cancelled; the rows in view say so.
    wait_until(
        lambda: all(c["state"] in TERMINAL for c in children_of(page, task_id)),
        30,
        interval=0.5,
        what="every child to end",
    )
    states = [c["state"] for c in children_of(page, task_id)]
    assert len(states) == SHARDS and "cancelled" in states, states
    assert set(states) <= {"cancelled", "succeeded"}, states
    expect(rows.first).to_contain_text(re.compile(r"succeeded|cancelled"), timeout=15_000)
    expect(rows.filter(has_text=re.compile(r"running|queued"))).to_have_count(0, timeout=15_000)


def test_a_failed_child_fails_the_workflow_and_its_row_says_why(page):
    task = run_primes(page, shards=6, slow_ms=100, fail_shard=2)
    expect(task.locator(".state")).to_have_text("failed", timeout=30_000)
    expect(stat(task, "Error")).to_have_text(re.compile(r"\(child_failed\)$"))
    task.get_by_role("button", name="Show 6 children").click()
    row = task.get_by_role("list", name="Children").locator('[aria-posinset="3"]')
    expect(row).to_contain_text("failed")
    expect(row).to_contain_text("failed (demo) (shard_failed)")
