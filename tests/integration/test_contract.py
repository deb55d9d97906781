"""CONTRACT.md's REST and Socket.IO surface, group by group, through Nginx."""

import re

import pytest
import requests
from conftest import BASE_URL, Api, Watcher, assert_gapless_single_terminal, wait_until

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SNAPSHOT_KEYS = {"id", "kind", "state", "progress", "message", "seq", "created_at", "updated_at"}


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


# --- REST shapes -----------------------------------------------------------


def test_create_answers_202_with_location_and_a_queued_snapshot(api):
    response = api.request(
        "POST", "/api/tasks", json={"kind": "simulate", "params": {"steps": 2, "step_ms": 0}}
    )
    assert response.status_code == 202
    snap = response.json()
    assert response.headers["Location"] == f"/api/tasks/{snap['id']}"
    assert SNAPSHOT_KEYS <= set(snap) and "result" not in snap and "error" not in snap
    assert (snap["state"], snap["seq"], snap["progress"]) == ("queued", 1, 0)
    assert ISO_Z.match(snap["created_at"]) and ISO_Z.match(snap["updated_at"])
    assert api.request("GET", response.headers["Location"]).json()["id"] == snap["id"]


def test_list_is_newest_first_and_only_the_owners(api):
    first, second = api.create(steps=1, step_ms=0), api.create(steps=1, step_ms=0)
    ids = [t["id"] for t in api.request("GET", "/api/tasks").json()["tasks"]]
    assert ids[:2] == [second["id"], first["id"]]
    other = Api()
    assert other.request("GET", "/api/tasks").json() == {"tasks": []}


def test_events_after_returns_the_stored_tail(api, watcher):
    task = api.create(steps=4, step_ms=50)
    watcher.follow(task["id"])
    watcher.wait_terminal([task["id"]])
    everything = api.request("GET", f"/api/tasks/{task['id']}/events?after=0").json()["events"]
    assert_gapless_single_terminal(everything)
    tail = api.request("GET", f"/api/tasks/{task['id']}/events?after=2").json()["events"]
    assert [e["seq"] for e in tail] == [e["seq"] for e in everything][2:]
    final = api.snapshot(task["id"])
    assert final["seq"] == everything[-1]["seq"] and final["result"] == {"steps": 4}
    assert final["progress"] == 100 and everything[-1]["result"] == final["result"]
    for after in ("-1", "x", "1.5"):
        assert_error(
            api.request("GET", f"/api/tasks/{task['id']}/events?after={after}"),
            400,
            "invalid_params",
        )


def test_failing_task_ends_failed_with_its_error(api, watcher):
    task = api.create(steps=5, step_ms=20, fail_at=3)
    watcher.follow(task["id"])
    watcher.wait_terminal([task["id"]])
    history = watcher.history(task["id"])
    assert_gapless_single_terminal(history, state="failed")
    assert history[-1]["error"]["code"] == "simulated_failure"
    snap = api.snapshot(task["id"])
    assert snap["state"] == "failed" and snap["error"]["code"] == "simulated_failure"
    assert "result" not in snap


def test_cancel_stops_a_running_task_then_409(api, watcher):
    task = api.create(steps=200, step_ms=100)
    watcher.follow(task["id"])
    wait_until(
        lambda: any(
            e["state"] == "running" and e["progress"] > 0 for e in watcher.history(task["id"])
        ),
        30,
        what="progress",
    )
    response = api.request("POST", f"/api/tasks/{task['id']}/cancel")
    assert response.status_code == 202 and response.json()["id"] == task["id"]
    watcher.wait_terminal([task["id"]], timeout=15)
    assert_gapless_single_terminal(watcher.history(task["id"]), state="cancelled")
    assert api.snapshot(task["id"])["state"] == "cancelled"
    assert_error(
        api.request("POST", f"/api/tasks/{task['id']}/cancel", json={}), 409, "already_finished"
    )


def test_openapi_document_is_served(api):
    doc = api.request("GET", "/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/tasks" in doc["paths"]


# --- Errors: bad input changes nothing -------------------------------------


@pytest.mark.parametrize(
    "body, code, field",
    [
        ({"kind": "nope"}, "invalid_params", "kind"),
        ({"params": {}}, "invalid_params", "kind"),
        ({"kind": "simulate", "params": {"steps": 0}}, "invalid_params", "params.steps"),
        ({"kind": "simulate", "params": {"steps": "5"}}, "invalid_params", "params.steps"),
        ({"kind": "simulate", "params": {"steps": True}}, "invalid_params", "params.steps"),
        ({"kind": "simulate", "params": {"step_ms": 60001}}, "invalid_params", "params.step_ms"),
        (
            {"kind": "simulate", "params": {"steps": 3, "fail_at": 4}},
            "invalid_params",
            "params.fail_at",
        ),
        ({"kind": "simulate", "params": {"colour": "red"}}, "invalid_params", "params.colour"),
        ({"kind": "simulate", "params": []}, "invalid_params", "params"),
        ({"kind": "simulate", "extra": 1}, "invalid_params", "extra"),
    ],
)
def test_bad_task_requests_name_the_field_and_create_nothing(api, body, code, field):
    message = assert_error(api.request("POST", "/api/tasks", json=body), 400, code)
    assert message.startswith(field), message
    assert api.request("GET", "/api/tasks").json() == {"tasks": []}


def test_malformed_json_wrong_type_and_oversized_bodies(api):
    headers = {"Content-Type": "application/json"}
    assert_error(
        api.request("POST", "/api/tasks", data="{nope", headers=headers), 400, "invalid_json"
    )
    assert_error(
        api.request("POST", "/api/tasks", data="[1]", headers=headers), 400, "invalid_json"
    )
    assert_error(
        api.request(
            "POST",
            "/api/tasks",
            data="kind=simulate",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        415,
        "unsupported_media_type",
    )
    big = '{"kind": "simulate", "params": {"x": "' + "a" * (1024 * 1024 + 10) + '"}}'
    assert_error(
        api.request("POST", "/api/tasks", data=big, headers=headers), 413, "payload_too_large"
    )
    assert api.request("GET", "/api/tasks").json() == {"tasks": []}


def test_foreign_origin_is_refused(api):
    response = api.request(
        "POST", "/api/tasks", json={"kind": "simulate"}, headers={"Origin": "http://evil.example"}
    )
    assert_error(response, 403, "forbidden_origin")
    assert api.request("GET", "/api/tasks").json() == {"tasks": []}


def test_unknown_api_path_is_json_404():
    assert_error(requests.get(f"{BASE_URL}/api/nothing-here", timeout=5), 404, "not_found")


# --- Ownership ---------------------------------------------------------------


def test_another_session_sees_nothing_of_a_task(api):
    task = api.create(steps=50, step_ms=100)
    stranger = Api()
    for method, path in [
        ("GET", f"/api/tasks/{task['id']}"),
        ("GET", f"/api/tasks/{task['id']}/events?after=0"),
        ("POST", f"/api/tasks/{task['id']}/cancel"),
    ]:
        response = stranger.request(method, path, json={} if method == "POST" else None)
        assert_error(response, 404, "not_found")
        missing = stranger.request(
            method, path.replace(task["id"], "no-such-task"), json={} if method == "POST" else None
        )
        assert missing.json() == response.json(), "a foreign task must look like a missing one"
    spy = Watcher(stranger).connect()
    try:
        ack = spy.subscribe(task["id"])
        assert ack == {
            "ok": False,
            "error": {"code": "not_found", "message": ack["error"]["message"]},
        }
    finally:
        spy.close()
    assert api.snapshot(task["id"])["state"] in ("queued", "running")
    api.request("POST", f"/api/tasks/{task['id']}/cancel", json={})


@pytest.mark.parametrize("payload", [None, "abc", {"after": 0}, {"task_id": 5}])
def test_subscribe_without_a_task_id_string_gets_invalid_params(watcher, payload):
    ack = watcher.sio.call("subscribe", payload, timeout=10)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_params"


@pytest.mark.parametrize("task_id", ["", "x" * 65, "../etc/passwd"])
def test_a_malformed_task_id_gets_one_answer_everywhere(api, watcher, task_id):
    """A string that cannot be a task id: REST's 404 and subscribe's `not_found` alike."""
    ack = watcher.sio.call("subscribe", {"task_id": task_id}, timeout=10)
    assert ack["ok"] is False and ack["error"]["code"] == "not_found"
    if task_id:
        response = api.request("GET", f"/api/tasks/{task_id}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("after", [-1, "3", 1.5, True, None])
def test_subscribe_with_bad_after_gets_invalid_params(api, watcher, after):
    task = api.create(steps=1, step_ms=0)
    ack = watcher.sio.call("subscribe", {"task_id": task["id"], "after": after}, timeout=10)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_params"
    assert watcher.follow(task["id"])["ok"], "the connection stays usable"


def test_unsubscribe_stops_live_events(api, watcher):
    task = api.create(steps=30, step_ms=100)
    watcher.follow(task["id"])
    wait_until(lambda: len(watcher.history(task["id"])) >= 3, 20, what="a few events")
    assert watcher.sio.call("unsubscribe", {"task_id": task["id"]}, timeout=10) == {"ok": True}
    seen = watcher.last_seq(task["id"])
    stream = api.request("GET", f"/api/tasks/{task['id']}/events?after=0").json()["events"]
    wait_until(
        lambda: (
            len(api.request("GET", f"/api/tasks/{task['id']}/events?after=0").json()["events"])
            > len(stream) + 3
        ),
        20,
        what="more stored events",
    )
    # Anything delivered after the ack would exceed what was seen right after it.
    assert watcher.last_seq(task["id"]) <= seen + 1
    api.request("POST", f"/api/tasks/{task['id']}/cancel", json={})
