"""Workflows on the stack (issue 33): the demo ``primes`` split into shards that run on
the three workers, rolled up into one bar; cancel and a failing child; and the chaos
rows: a worker killed or frozen while it runs children, Redis and the web restarted.

Every time: the parent ends once, its history is gapless, its progress never falls,
and its result counts every child exactly once (the primes below 1,000,000: 78,498).
"""

import time

import pytest
from conftest import (
    TERMINAL,
    Api,
    Watcher,
    assert_gapless_single_terminal,
    compose,
    docker,
    is_ready,
    record_chaos_row,
    stored_history,
    wait_until,
)

PRIMES_BELOW_1E6 = 78_498


def children(api, task_id):
    """Every child's snapshot, page by page, as the page reads them."""
    found, offset = [], 0
    while True:
        response = api.request("GET", f"/api/tasks/{task_id}/children?offset={offset}&limit=100")
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["children"]
        offset += len(body["children"])
        if not body["children"] or offset >= body["total"]:
            assert len(found) == body["total"]
            return found


def assert_never_falls(history):
    running = [e["progress"] for e in history if e["state"] not in TERMINAL]
    assert running == sorted(running), f"the bar went back: {running}"


def follow(api, task_id):
    watcher = Watcher(api).connect()
    watcher.follow(task_id)
    return watcher


def test_a_workflow_of_59_children_on_three_workers_ends_once_with_one_bar(api):
    # 59 children and the parent: the test stack's whole minute per session (60).
    parent = api.create("primes", limit=1_000_000, shards=59, slow_ms=20)
    assert parent["children"] == {"total": 59, "done": 0, "failed": 0}
    watcher = follow(api, parent["id"])
    try:
        watcher.wait_terminal([parent["id"]], timeout=180)
        history = watcher.history(parent["id"])
    finally:
        watcher.close()
    assert_gapless_single_terminal(history)
    assert history == stored_history(api, parent["id"])
    assert_never_falls(history)
    assert history[-1]["result"] == {"primes": PRIMES_BELOW_1E6, "shards": 59, "failed": 0}
    stages = [e.get("stage") for e in history if e["state"] == "running"]
    assert "Counting" in stages and stages[-1] == "Summing"
    counted = [e["done"] for e in history if "done" in e and e.get("stage") == "Counting"]
    assert counted == sorted(counted) and counted[-1] == 59
    kids = children(api, parent["id"])
    assert [k["state"] for k in kids] == ["succeeded"] * 59
    assert len({k["worker"] for k in kids}) == 3  # on every worker
    assert all(k["parent"] == parent["id"] for k in kids)
    # The parent alone is listed; a child is a task of its own, read by id.
    listed = [t["id"] for t in api.request("GET", "/api/tasks").json()["tasks"]]
    assert parent["id"] in listed and kids[0]["id"] not in listed
    assert_gapless_single_terminal(stored_history(api, kids[0]["id"]))


def test_cancelling_a_workflow_ends_it_and_its_queued_children_never_start(api):
    parent = api.create("primes", limit=1_000_000, shards=59, slow_ms=300)
    wait_until(
        lambda: api.snapshot(parent["id"])["children"]["done"] >= 1,
        60,
        interval=0.2,
        what="a child to finish",
    )
    response = api.request("POST", f"/api/tasks/{parent['id']}/cancel")
    assert response.status_code == 202, response.text
    assert_gapless_single_terminal(stored_history(api, parent["id"]), state="cancelled")

    def all_ended():
        kids = children(api, parent["id"])
        return kids if all(k["state"] in TERMINAL for k in kids) else None

    kids = wait_until(all_ended, 60, interval=0.5, what="every child to end")
    never_started = [k for k in kids if "started_at" not in k]
    assert never_started, "some children should still have been queued"
    for kid in never_started:
        assert [e["state"] for e in stored_history(api, kid["id"])] == ["queued", "cancelled"]
    assert {k["state"] for k in kids} <= {"succeeded", "cancelled"}


def test_a_failing_child_fails_the_workflow_once_and_cancels_the_rest(api):
    parent = api.create("primes", limit=1_000_000, shards=40, slow_ms=100, fail_shard=3)
    watcher = follow(api, parent["id"])
    try:
        watcher.wait_terminal([parent["id"]], timeout=120)
        history = watcher.history(parent["id"])
    finally:
        watcher.close()
    assert_gapless_single_terminal(history, state="failed")
    assert history[-1]["error"]["code"] == "child_failed"
    assert "Child 3 failed" in history[-1]["error"]["message"]
    kids = wait_until(
        lambda: (k := children(api, parent["id"])) and all(c["state"] in TERMINAL for c in k) and k,
        60,
        interval=0.5,
        what="every child to end",
    )
    assert kids[3]["error"]["code"] == "shard_failed"
    assert "cancelled" in {k["state"] for k in kids}


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"shards": 1001}, "params.shards"),
        ({"shards": 0}, "params.shards"),
        ({"fail_shard": "3"}, "params.fail_shard"),
    ],
)
def test_a_bad_workflow_is_refused_and_nothing_starts(api, bad, reason):
    before = api.request("GET", "/api/tasks").json()["tasks"]
    response = api.request("POST", "/api/tasks", json={"kind": "primes", "params": bad})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_params"
    assert reason in response.json()["error"]["message"]
    assert api.request("GET", "/api/tasks").json()["tasks"] == before


def test_a_workflows_children_count_against_the_creation_window(api):
    # The test stack allows 60 creations a minute per session, in fixed windows (the
    # clock the containers share): start early in one, so both creations share it.
    if time.time() % 60 > 40:
        time.sleep(60 - time.time() % 60 + 0.5)
    body = {"kind": "primes", "params": {"limit": 1_000, "shards": 30, "slow_ms": 0}}
    first = api.post_task(body)  # 31 creations
    assert first.status_code == 202, first.text
    refused = api.post_task(body)  # 31 more: 62 > 60
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "per session" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    listed = [t["id"] for t in api.request("GET", "/api/tasks").json()["tasks"]]
    assert listed == [first.json()["id"]], "a refused workflow must leave no task"
    # A plan larger than a whole window would never fit: 400, not a 429 to wait out.
    body["params"]["shards"] = 60
    too_big = api.post_task(body)
    assert too_big.status_code == 400, too_big.text
    assert "RATE_LIMIT_PER_MINUTE" in too_big.json()["error"]["message"]


def test_a_child_kind_cannot_be_created_on_its_own(api):
    response = api.request(
        "POST", "/api/tasks", json={"kind": "count_primes", "params": {"start": 0, "stop": 9}}
    )
    assert response.status_code == 400 and "kind" in response.json()["error"]["message"]


# --- chaos: the parent ends once, never falls, counts every child once ------------


def busiest_child_worker(api, parent_id):
    running = [k.get("worker") for k in children(api, parent_id) if k["state"] == "running"]
    return max(set(running) - {None}, key=running.count)


def freeze_busiest(ctx):
    ctx["paused"] = busiest_child_worker(ctx["api"], ctx["parent"])
    docker("pause", ctx["paused"])
    # Frozen past its runs' leases (10 s): another worker takes its children over;
    # then it thaws, and its fenced runs must add nothing.
    wait_until(
        lambda: any(
            k["state"] == "retrying" or k.get("worker") not in (None, ctx["paused"])
            for k in children(ctx["api"], ctx["parent"])
        ),
        60,
        interval=0.5,
        what="another worker to take over",
    )
    docker("unpause", ctx.pop("paused"))


WORKFLOW_FAULTS = {
    "workflow: kill -9 worker": lambda ctx: docker(
        "kill", "--signal", "KILL", busiest_child_worker(ctx["api"], ctx["parent"])
    ),
    "workflow: freeze worker": freeze_busiest,
    "workflow: restart redis": lambda ctx: compose("restart", "redis", timeout=120),
    "workflow: restart web": lambda ctx: compose("restart", "web", timeout=120),
}


@pytest.mark.parametrize("fault", list(WORKFLOW_FAULTS))
def test_a_workflow_ends_once_and_counts_each_child_once_through(fault):
    api = Api()
    parent = api.create("primes", limit=1_000_000, shards=36, slow_ms=250)
    watcher = follow(api, parent["id"])
    ctx = {"api": api, "parent": parent["id"]}
    try:
        wait_until(
            lambda: sum(k["state"] == "running" for k in children(api, parent["id"])) >= 3,
            60,
            interval=0.2,
            what="children running",
        )
        started = time.monotonic()
        WORKFLOW_FAULTS[fault](ctx)
        wait_until(is_ready, 60, interval=0.5, what="the stack to be ready")
        recovery = time.monotonic() - started
        watcher.wait_terminal([parent["id"]], timeout=180)
        row, histories = record_chaos_row(fault, [watcher], [parent], recovery)
        history = histories[parent["id"]]
        assert row["terminal"] == 1 and row["gaps"] == 0, row
        assert_gapless_single_terminal(history)
        assert_never_falls(history)
        assert history[-1]["result"] == {"primes": PRIMES_BELOW_1E6, "shards": 36, "failed": 0}
        assert_never_falls(stored_history(api, parent["id"]))
    finally:
        if "paused" in ctx:
            docker("unpause", ctx["paused"])
        watcher.close()
        api.http.close()
        if fault == "workflow: kill -9 worker":
            compose("up", "-d", "--wait", "--scale", "worker=3", timeout=180)
