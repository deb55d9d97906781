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
window.__recordBars = new MutationObserver((records) => {
  for (const r of records) {
    const bars = r.type === "attributes" ? [r.target]
      : [...r.addedNodes].flatMap(
          (n) => n.querySelectorAll ? [...n.querySelectorAll('[role=progressbar]')] : []);
    for (const bar of bars) {
      if (bar.getAttribute && bar.getAttribute("role") === "progressbar")
        window.__bars.push(Number(bar.getAttribute("aria-valuenow")));
    }
  }
});
window.__recordBars.observe(document, {subtree: true, childList: true, attributes: true,
                                       attributeFilter: ["aria-valuenow"]});
"""


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context_options():
    """Options of the test's browser context; a test overrides it to change them."""
    return {}


@pytest.fixture
def page(browser, request, context_options):
    """A fresh browser session on the page; fails the test on any console error
    but those its ``allow_console_errors(pattern)`` marker expects."""
    context = browser.new_context(accept_downloads=True, **context_options)
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


def kinds(page):
    return {k["kind"]: k for k in page.request.get(BASE_URL + "/api/kinds").json()["kinds"]}


def label(spec, name):
    """The page's label of a field: its schema's title, else its name made readable."""
    return spec["schema"]["properties"][name].get("title") or name.replace("_", " ").capitalize()


def pick(page, kind):
    """Show the form of ``kind`` (made from its params' JSON Schema); returns a
    function giving the control of a param by its label."""
    spec = kinds(page)[kind]
    page.get_by_label("Kind", exact=True).select_option(kind)
    form = page.get_by_role("form", name=spec["title"])
    form.field = lambda name: form.get_by_label(label(spec, name), exact=True)
    return form


def run_simulation(page, steps, step_ms):
    """Start a simulation from its form; returns the new task's progress bar."""
    form = pick(page, "simulate")
    form.field("steps").fill(str(steps))
    form.field("step_ms").fill(str(step_ms))
    form.get_by_role("button", name="Start").click()
    return first_task(page).get_by_role("progressbar")


def run_export(page, file_format="csv"):
    """Start an export of the whole table from its form; returns its task."""
    form = pick(page, "export")
    form.field("format").select_option(file_format)
    form.get_by_role("button", name="Start").click()
    return first_task(page)


def test_export_shows_live_progress_then_a_download_with_the_reported_rows(page):
    task = run_export(page)
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
    # The kind's summary of its result, written by the worker.
    expect(task.locator(".message")).to_have_text(re.compile(r"^Exported 1,000,000 rows"))
    expect(task.locator(".message")).to_have_text(all_tasks(page)[0]["message"])
    # The result's pairs, whatever the kind: a <dd> named by its <dt>.
    expect(task.get_by_label("Rows", exact=True)).to_have_text("1,000,000")
    expect(task.get_by_label("Filename", exact=True)).to_have_text(snapshot["result"]["filename"])


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
    task = run_export(page, "csv.gz")
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


# --- beyond the bar (issue 20) ---------------------------------------------------

# Long tasks (> 50 ms on the main thread) from the first script on.
RECORD_LONG_TASKS = """
window.__longTasks = [];
window.__longTaskObserver?.disconnect();
window.__longTaskObserver = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
});
window.__longTaskObserver.observe({type: "longtask"});
"""
# Every notification the page shows, with the real API underneath.
RECORD_NOTIFICATIONS = """
window.__notifications = [];
if (window.Notification) {
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) { super(title, options); window.__notifications.push(title); }
  };
}
"""


def tasks_list(page):
    return page.get_by_role("list", name="Your tasks")


def task_items(page):
    return tasks_list(page).get_by_role("listitem").filter(has=page.get_by_role("progressbar"))


def stat(task, name):
    """The value a task shows for one of its facts ("Time left", "Elapsed", ...)."""
    return task.get_by_label(name, exact=True)  # a <dd> named by its <dt>


def seconds(text):
    """'1 min 5 s' or '8 s' as seconds."""
    minutes = re.search(r"(\d+) min", text)
    secs = re.search(r"(\d+) s", text)
    return (int(minutes.group(1)) * 60 if minutes else 0) + (int(secs.group(1)) if secs else 0)


def create(page, kind="simulate", **params):
    """Start a task over REST in the page's own session (shown after a reload)."""
    response = page.request.post(BASE_URL + "/api/tasks", data={"kind": kind, "params": params})
    assert response.status == 202, response.text()
    return response.json()


def all_tasks(page):
    return page.request.get(BASE_URL + "/api/tasks").json()["tasks"]


def test_a_steady_simulation_shows_percent_elapsed_rate_and_a_falling_eta(page):
    run_simulation(page, steps=48, step_ms=250)
    task = first_task(page)
    left = stat(task, "Time left")
    expect(left).to_have_text(re.compile(r"\d+ s"), timeout=10_000)
    expect(stat(task, "Rate")).to_have_text(re.compile(r"^[34]\.\d steps/s$"))
    expect(stat(task, "Progress")).to_have_text(re.compile(r"^\d+ % · \d+ of 48 steps$"))
    expect(stat(task, "Elapsed")).to_have_text(re.compile(r"\d+ s"))
    created = stat(task, "Created").locator("time")
    expect(created).to_have_attribute("title", re.compile(r"20\d\d"))
    readings = []
    for _ in range(12):
        if left.is_visible():
            readings.append(seconds(left.inner_text()))
        page.wait_for_timeout(400)
    # Smoothed: it counts down, never jumps up.
    assert len(readings) >= 6, readings
    assert all(b <= a + 1 for a, b in zip(readings, readings[1:])), readings
    assert readings[-1] <= readings[0] - 3, readings
    expect(task.locator(".state")).to_have_text("succeeded", timeout=30_000)
    expect(stat(task, "Time left")).to_be_hidden()
    expect(stat(task, "Finished").locator("time")).to_have_attribute("title", re.compile(r"20"))


def test_an_export_shows_rows_done_and_rows_per_second(page):
    task = run_export(page)
    expect(stat(task, "Rate")).to_have_text(re.compile(r"^[\d,]+ rows/s$"), timeout=30_000)
    expect(stat(task, "Progress")).to_have_text(re.compile(r"^\d+ % · [\d,]+ of 1,000,000 rows$"))
    task.get_by_role("button", name="Cancel").click()
    expect(task.locator(".state")).to_have_text("cancelled", timeout=30_000)


def test_a_failed_task_shows_its_error_and_runs_again_with_the_same_params(page):
    failed = create(page, steps=3, step_ms=50, fail_at=2)
    page.reload()
    task = task_items(page).first
    expect(task.locator(".state")).to_have_text("failed", timeout=30_000)
    expect(stat(task, "Error")).to_have_text("Simulated failure at step 2 (simulated_failure)")
    task.get_by_role("button", name="Run again").click()
    expect(task_items(page)).to_have_count(2)
    newest = all_tasks(page)[0]
    assert newest["id"] != failed["id"]
    assert newest["params"] == {"steps": 3, "step_ms": 50, "fail_at": 2}
    expect(task_items(page).first.locator(".state")).to_have_text("failed", timeout=30_000)


def test_a_queued_task_shows_its_place_in_the_queue(page):
    # More long tasks than the test stack's 3 workers x 4 slots run at once.
    ids = [create(page, steps=20, step_ms=1000)["id"] for _ in range(16)]
    try:
        page.reload()
        expect(stat(task_items(page).first, "Position in queue")).to_have_text(
            re.compile(r"^\d+$"), timeout=10_000
        )
    finally:
        for task_id in ids:
            page.request.post(BASE_URL + f"/api/tasks/{task_id}/cancel", data={})


def test_the_event_log_pages_the_history_and_follows_live(page):
    run_simulation(page, steps=150, step_ms=50)
    task = first_task(page)
    # Late enough that the history is longer than a page (50 events).
    expect(task.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", re.compile(r"^[89]\d$"), timeout=15_000
    )
    task.get_by_role("button", name="Show log").click()
    log = task.get_by_role("list", name="Event log")
    expect(log.get_by_role("listitem").first).to_contain_text("queued")
    expect(log.get_by_role("listitem")).to_have_count(50)  # one page
    task.get_by_role("button", name="Load more").click()  # the next; then it follows live
    expect(log.get_by_role("listitem").last).to_contain_text("succeeded", timeout=30_000)
    states = [s for s in log.locator(".log-state").all_inner_texts()]
    firsts = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert firsts == ["queued", "running", "succeeded"], firsts
    seqs = [int(n) for n in log.locator(".log-seq").all_inner_texts()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 50


def test_the_title_shows_progress_while_a_task_runs(page):
    run_simulation(page, steps=20, step_ms=250)
    expect(page).to_have_title(re.compile(r"^\d+ % · Taskbeam$"))
    expect(first_task(page).locator(".state")).to_have_text("succeeded", timeout=30_000)
    expect(page).to_have_title("Taskbeam")


@pytest.fixture
def notifying(browser):
    context = browser.new_context()
    context.grant_permissions(["notifications"], origin=BASE_URL)
    context.add_init_script(RECORD_NOTIFICATIONS)
    page = context.new_page()
    page.goto(BASE_URL + "/")
    expect(page.get_by_role("status")).to_have_text("Connected")
    yield page
    context.close()


def test_a_notification_fires_when_a_task_ends_while_the_page_is_hidden(notifying):
    page = notifying
    page.get_by_role("button", name="Notify me when tasks end").click()
    expect(page.get_by_role("button", name="Notify me when tasks end")).to_be_hidden()
    run_simulation(page, steps=8, step_ms=250)
    expect(first_task(page).locator(".state")).to_have_text("running")
    # As when the user switches tabs (headless Chromium never hides a page itself).
    page.evaluate("""() => {
      Object.defineProperty(document, "visibilityState", {get: () => "hidden"});
      Object.defineProperty(document, "hidden", {get: () => true});
      document.dispatchEvent(new Event("visibilitychange"));
    }""")
    page.wait_for_function("() => window.__notifications.length > 0", timeout=30_000)
    title = kinds(page)["simulate"]["title"]
    assert page.evaluate("window.__notifications") == [f"{title} succeeded"]


def test_clear_finished_removes_finished_tasks_only(page):
    done = create(page, steps=1, step_ms=0)
    running = create(page, steps=60, step_ms=500)
    page.reload()
    expect(task_items(page)).to_have_count(2)
    expect(task_items(page).last.locator(".state")).to_have_text("succeeded", timeout=30_000)
    page.get_by_role("button", name="Clear finished").click()
    expect(task_items(page)).to_have_count(1)
    assert [t["id"] for t in all_tasks(page)] == [running["id"]]
    assert page.request.get(BASE_URL + f"/api/tasks/{done['id']}").status == 404
    page.request.post(BASE_URL + f"/api/tasks/{running['id']}/cancel", data={})


def test_filters_by_state_and_kind(page):
    create(page, steps=1, step_ms=0)
    create(page, steps=2, step_ms=0, fail_at=1)
    page.reload()
    expect(task_items(page)).to_have_count(2)
    expect(task_items(page).locator(".state")).to_have_text(["failed", "succeeded"], timeout=30_000)
    page.get_by_label("Show state").select_option(label="Failed")
    expect(task_items(page)).to_have_count(1)
    expect(task_items(page).locator(".state")).to_have_text(["failed"])
    page.get_by_label("Show state").select_option(label="All")
    page.get_by_label("Show kind").select_option(label="Export")
    expect(task_items(page)).to_have_count(0)
    expect(page.get_by_text("No tasks match these filters.")).to_be_visible()


def test_older_tasks_come_in_pages(page):
    for _ in range(23):
        create(page, steps=1, step_ms=0)
    page.reload()
    expect(task_items(page)).to_have_count(20)
    page.get_by_role("button", name="Show older tasks").click()
    expect(task_items(page)).to_have_count(23)
    expect(page.get_by_role("button", name="Show older tasks")).to_be_hidden()


def test_keyboard_only_starts_a_task_and_opens_its_log(page):
    steps = pick(page, "simulate").field("steps")
    steps.fill("3")
    steps.press("Enter")  # submits the form, as a person would
    task = first_task(page)
    expect(task.locator(".state")).to_have_text("succeeded", timeout=30_000)
    show_log = task.get_by_role("button", name="Show log")
    for _ in range(40):
        if show_log.evaluate("el => el === document.activeElement"):
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(task.get_by_role("list", name="Event log")).to_be_visible()
    hide_log = task.get_by_role("button", name="Hide log")
    outline = hide_log.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none", "the focused control shows no focus ring"


@pytest.mark.parametrize(
    "context_options, name",
    [
        ({"color_scheme": "light"}, "light"),
        ({"color_scheme": "dark"}, "dark"),
        ({"viewport": {"width": 360, "height": 780}, "is_mobile": True}, "360px"),
    ],
)
def test_light_dark_and_narrow_screens_pass_axe_and_fit(page, context_options, name):
    run_simulation(page, steps=3, step_ms=200)
    expect(first_task(page).locator(".state")).to_have_text("succeeded", timeout=30_000)
    run_simulation(page, steps=200, step_ms=250)
    expect(stat(first_task(page), "Time left")).to_be_visible(timeout=10_000)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
    assert (sum(channels) < 150) == (name == "dark"), background
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    violations = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"))
    first_task(page).get_by_role("button", name="Cancel").click()
    assert not violations, violations


@pytest.mark.parametrize("context_options", [{"reduced_motion": "reduce"}])
def test_reduced_motion_stops_the_bar_animation(page):
    bar = run_simulation(page, steps=3, step_ms=100)
    fill = bar.locator("xpath=*").first
    assert fill.evaluate("el => getComputedStyle(el).transitionDuration") == "0s"


def test_a_hundred_tasks_updating_ten_times_a_second_cause_no_long_task(page):
    """The page's own event path under the load of 100 busy tasks; the test stack's
    12 worker slots cannot run 100 at once, so the events are made here.

    One more 8-s window is allowed: on the 2-core box that runs the whole stack, a
    lone 55-70 ms task shows up in about 2 windows of 5 while the page's own work per
    frame stays under 20 ms (measured around its flush). Earlier versions of this page
    failed it: repainting every task on every event, 18-25 long tasks of up to 111-133
    ms per window; painting off-screen tasks every frame too, 53-101 ms in both windows.
    """
    page.evaluate("""() => {
      window.__recordBars.disconnect();  // the test's own observer costs more than the page
      socket.disconnect();  // made-up tasks: nothing to subscribe to
      for (let i = 0; i < 100; i++) {
        const now = new Date().toISOString();
        track({id: ("load" + i).padEnd(16, "x"), kind: "simulate", state: "running",
               progress: 0, message: "Running", seq: 2, created_at: now, started_at: now,
               updated_at: now}, false);
      }
      window.__seq = 2;
    }""")
    for shown in (40, 60, 80, 100):
        page.get_by_role("button", name="Show older tasks").click()
        expect(task_items(page)).to_have_count(shown)
    windows = []
    for _ in range(2):
        page.evaluate(RECORD_LONG_TASKS)
        page.evaluate("""() => {
          window.__feed = setInterval(() => {   // 100 tasks x 10 events/s
            window.__seq += 1;
            const ts = Date.now() / 1000;
            for (let i = 0; i < 100; i++) {
              apply({task_id: ("load" + i).padEnd(16, "x"), seq: window.__seq,
                     state: "running", progress: Math.min(99, window.__seq / 2),
                     message: `Step ${window.__seq}`, ts, done: window.__seq, total: 200});
            }
          }, 100);
        }""")
        page.wait_for_timeout(8_000)
        page.evaluate("clearInterval(window.__feed)")
        # Read before any locator: Playwright's own queries run on the main thread.
        windows.append(page.evaluate("window.__longTasks.map(Math.round)"))
        if max(windows[-1], default=0) <= 50:
            break
    print(f"\nlong tasks, 100 tasks x 10 updates/s, per 8-s window (ms): {windows}")
    last = task_items(page).last
    last.scroll_into_view_if_needed()
    expect(stat(last, "Time left")).to_be_visible()
    expect(stat(last, "Progress")).to_have_text(re.compile(r"^\d+ % · \d+ of 200 steps$"))
    assert max(windows[-1], default=0) <= 50, windows


def test_page_weight_gzipped_stays_under_25_kb(page):
    """What the first load transfers (compressed bodies) of the page's own files,
    auth.js included (jwt mode loads it); the API, and the Socket.IO client app.js
    loads once the page has its answers, aside."""
    assert "socket.io" not in page.request.get(BASE_URL + "/").text()  # loaded lazily
    page.evaluate("async () => { await (await fetch('/auth.js', {cache: 'no-store'})).text(); }")
    page.wait_for_function("() => performance.getEntriesByName(origin + '/auth.js').length")
    entries = page.evaluate("""() => [...performance.getEntriesByType("navigation"),
                                     ...performance.getEntriesByType("resource")]
        .filter((e) => !/\\/(api|socket\\.io)\\//.test(e.name))
        .map((e) => [e.name, e.encodedBodySize, e.decodedBodySize])""")
    own = [e for e in entries if "/vendor/" not in e[0]]
    total = sum(encoded for _, encoded, _ in own)
    client = sum(encoded for name, encoded, _ in entries if "/vendor/" in name)
    print(
        f"\npage weight, first load, gzipped: {total / 1024:.1f} KB "
        f"(+ {client / 1024:.1f} KB Socket.IO client, loaded after): {entries}"
    )
    assert all(encoded > 0 for _, encoded, _ in entries), entries  # none from a cache
    assert client > 0  # it did load
    assert total < 25 * 1024


# --- a form for every kind (issue 30) ------------------------------------------


def test_every_kind_has_a_form_with_labelled_inputs_and_its_bounds(page):
    picker = page.get_by_label("Kind", exact=True)
    registered = kinds(page)
    assert picker.locator("option").evaluate_all("os => os.map((o) => o.value)") == sorted(
        registered
    )
    for kind, spec in registered.items():
        form = pick(page, kind)
        expect(page.locator("#kind-description")).to_have_text(spec["description"])
        unlabelled = form.evaluate("""(f) => [...f.querySelectorAll("input, select")]
            .filter((el) => !el.labels.length || !el.labels[0].textContent.trim())
            .map((el) => el.outerHTML)""")
        assert not unlabelled, (kind, unlabelled)
        schema = spec["schema"]
        for name, prop in schema["properties"].items():
            field = form.field(name)
            if prop.get("type") == "array":  # a group of checkboxes, named by its legend
                field = form.get_by_role("group", name=label(spec, name))
            expect(field).to_be_visible()
            for key, attr in (("minimum", "min"), ("maximum", "max"), ("maxLength", "maxlength")):
                if key in prop:
                    expect(field).to_have_attribute(attr, str(prop[key]))
            if name in schema.get("required", []) and prop.get("type") != "boolean":
                expect(field).to_have_attribute("required", "")
        expect(form.get_by_role("button", name="Start")).to_be_visible()


# The refused request is logged by Chromium as a failed resource load.
@pytest.mark.allow_console_errors(r"status of 400")
def test_a_refused_value_is_named_beside_its_field(page):
    form = pick(page, "simulate")
    form.evaluate("f => { f.noValidate = true; }")  # as if the browser let it through
    steps = form.field("steps")
    steps.fill("0")
    form.get_by_role("button", name="Start").click()
    expect(page.get_by_role("alert").first).to_contain_text("params.steps")
    expect(steps).to_have_attribute("aria-invalid", "true")
    described = steps.get_attribute("aria-describedby").split()
    beside = " ".join(page.locator(f"#{i}").inner_text() for i in described)
    assert beside.strip(), "no error beside the field"
    expect(steps).to_be_focused()
    steps.fill("2")
    form.field("step_ms").fill("0")
    form.get_by_role("button", name="Start").click()
    expect(first_task(page).locator(".state")).to_have_text("succeeded", timeout=30_000)
    expect(steps).not_to_have_attribute("aria-invalid", "true")
    assert all_tasks(page)[0]["params"] == {"steps": 2, "step_ms": 0}


def test_a_teams_own_job_runs_from_its_generated_form(page):
    """jobs/countdown.py, outside the package (JOBS_MODULES): its form, its units, its
    summary and its result, with no line of the page written for it."""
    form = pick(page, "countdown")
    form.field("start").fill("8")
    form.field("pause_s").fill("0.5")
    form.field("word").fill("go")
    form.field("shout").check()
    form.get_by_role("button", name="Start").click()
    task = first_task(page)
    expect(task).to_contain_text("of 8 numbers", timeout=15_000)  # its units, by the bar
    expect(task.locator(".state")).to_have_text("succeeded", timeout=30_000)
    expect(task).to_contain_text("GO")  # the kind's summary, the final message
    assert all_tasks(page)[0]["params"] == {
        "start": 8,
        "pause_s": 0.5,
        "word": "go",
        "shout": True,
    }
