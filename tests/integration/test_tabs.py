"""Tasks appear wherever their owner looks (session mode, Chromium): a task started
in a second tab of one browser, or over the API with the same cookie, shows up live
in the first tab, without a reload.

The page itself is driven only through stable means: tab 2 creates the task with
``fetch`` as the page's own code does, and tab 1 is asked whether a visible list item
names the task (by its id in an attribute, or by its kind). test_identity.py runs the
same case in the jwt and header modes with :func:`start_in_tab` and :func:`shows_task`.
"""

import json

import pytest
import requests
from conftest import BASE_URL, wait_until
from playwright.sync_api import expect, sync_playwright
from test_page import CHROMIUM, CHROMIUM_ARGS

COUNTDOWN = {"kind": "countdown", "params": {"start": 20, "pause_s": 0.2}}
# Set in tab 1 before the task exists: gone if the tab reloads or navigates.
MARK = "window.__notReloaded = true"
# A visible item of a list that names the task: an attribute holding its id (the
# page's rows give their facts ids made from it) or, failing that, its kind in the
# text of an item of the tasks' list (a fresh owner has no other task of that kind).
SHOWS_TASK = """([id, kind]) => {
  const visible = (el) => !el.closest("[hidden]") && el.getClientRects().length > 0;
  const items = [...document.querySelectorAll("li, [role=listitem]")].filter(visible);
  const byId = items.some((item) => [item, ...item.querySelectorAll("*")].some((el) =>
    [...el.attributes].some((a) => a.value.includes(id))));
  const list = document.getElementById("tasks");
  const byKind = !!list && items.some((item) => list.contains(item)
    && item.textContent.toLowerCase().includes(kind));
  return byId || byKind;
}"""
# Tab 2 starts a task as the page does: same origin, its cookie, and the token the
# page keeps (auth.js; AUTH_MODE=jwt), if any.
START = """async (body) => {
  const headers = { "Content-Type": "application/json" };
  const token = localStorage.getItem("taskbeam.token");
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch("/api/tasks", { method: "POST", credentials: "same-origin",
                                               headers, body: JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}"""


def open_tab(context, url):
    """A page of ``context`` on ``url``, its socket connected."""
    page = context.new_page()
    page.goto(url + "/")
    expect(page.get_by_role("status")).to_have_text("Connected", timeout=20_000)
    return page


def start_in_tab(page, body=COUNTDOWN):
    reply = page.evaluate(START, body)
    assert reply["status"] == 202, reply
    return reply["body"]


def shows_task(page, task):
    return page.evaluate(SHOWS_TASK, [task["id"], task["kind"]])


def assert_appears_live(page, task, timeout=15):
    """``task`` shows up in ``page`` without a reload."""
    wait_until(
        lambda: shows_task(page, task), timeout, interval=0.2, what=f"{task['id']} in the tab"
    )
    assert page.evaluate("window.__notReloaded === true"), "the tab reloaded"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def first_tab(browser):
    """The first tab of a fresh browser session (one cookie for all its tabs)."""
    context = browser.new_context()
    page = open_tab(context, BASE_URL)
    page.evaluate(MARK)
    yield page
    context.close()


def test_a_task_started_in_a_second_tab_appears_live_in_the_first(first_tab):
    second = open_tab(first_tab.context, BASE_URL)
    task = start_in_tab(second)
    assert_appears_live(first_tab, task)
    wait_until(lambda: shows_task(second, task), 15, interval=0.2, what="the task in tab 2")


def test_a_task_started_over_the_api_with_the_same_cookie_appears_live(first_tab):
    cookies = {c["name"]: c["value"] for c in first_tab.context.cookies(BASE_URL)}
    assert cookies, "the page set no session cookie"
    response = requests.post(
        f"{BASE_URL}/api/tasks",
        data=json.dumps(COUNTDOWN),
        headers={"Content-Type": "application/json", "Origin": BASE_URL},
        cookies=cookies,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    assert_appears_live(first_tab, response.json())
