"""The example app (examples/flask_app/): a Flask app with its own Flask-Login users and
Taskbeam through the extension, on the stack's Redis, its tasks run by the stack's
workers. tests/run.sh's example pass starts it (examples/flask_app/compose.yml) and sets
TEST_EXAMPLE_URL and the users' passwords; the other passes skip this module."""

import os

import pytest
import requests
import socketio
from conftest import Watcher, assert_gapless_single_terminal, wait_until

EXAMPLE_URL = os.environ.get("TEST_EXAMPLE_URL", "")
PASSWORDS = {
    "alice": os.environ.get("EXAMPLE_ALICE_PASSWORD", ""),
    "bob": os.environ.get("EXAMPLE_BOB_PASSWORD", ""),
}
REPORT = {"title": "Q3", "sections": 6, "pause_s": 0.15}

pytestmark = pytest.mark.skipif(
    not EXAMPLE_URL, reason="the example app runs in tests/run.sh's example pass"
)


class User:
    """A signed-in user of the example app: a cookie jar, as a browser's."""

    def __init__(self, name=None):
        self.http = requests.Session()
        if name is not None:
            response = self.post("/login", json={"user": name, "password": PASSWORDS[name]})
            assert response.status_code == 200, response.text
            assert response.json() == {"user": name}

    def request(self, method, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        return self.http.request(method, f"{EXAMPLE_URL}{path}", **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def cookie_header(self):
        return "; ".join(f"{c.name}={c.value}" for c in self.http.cookies)


class Pages(Watcher):
    """The user's open page: a Socket.IO client that also keeps ``task_created``."""

    def __init__(self, user):
        super().__init__(user, url=EXAMPLE_URL)
        self.created = []
        self.sio.on("task_created", self._on_created)

    def _on_created(self, snapshot):
        with self.lock:
            self.created.append(snapshot)

    def created_ids(self):
        with self.lock:
            return [s["id"] for s in self.created]


@pytest.fixture
def alice():
    user = User("alice")
    pages = Pages(user).connect()
    yield user, pages
    pages.close()
    user.http.close()


@pytest.fixture
def bob():
    user = User("bob")
    pages = Pages(user).connect()
    yield user, pages
    pages.close()
    user.http.close()


def watch_to_the_end(user, pages, snapshot):
    """Follow a task the user just started to its terminal event; its final snapshot."""
    assert snapshot["state"] == "queued" and snapshot["kind"] == "report", snapshot
    task_id = snapshot["id"]
    # Started elsewhere (a view, another tab), it appears on the user's open page.
    wait_until(lambda: task_id in pages.created_ids(), 10, what="task_created on the socket")
    pages.follow(task_id)
    pages.wait_terminal([task_id], timeout=60)
    history = pages.history(task_id)
    assert_gapless_single_terminal(history)
    running = [e["progress"] for e in history if e["state"] == "running"]
    assert running == sorted(running) and len(set(running)) >= 2, running
    final = user.get(f"/api/tasks/{task_id}")
    assert final.status_code == 200, final.text
    return final.json()


def test_the_view_starts_a_task_for_the_user_with_submit(alice):
    user, pages = alice
    response = user.post("/reports", json=REPORT)
    assert response.status_code == 202, response.text
    assert response.headers["Location"].endswith(f"/api/tasks/{response.json()['id']}")
    final = watch_to_the_end(user, pages, response.json())
    assert final["state"] == "succeeded"
    assert final["result"] == {"title": "Q3", "sections": 6}
    assert final["message"] == "Q3: 6 sections"  # the kind's summary, from the worker
    listed = user.get("/api/tasks").json()["tasks"]
    assert final["id"] in [t["id"] for t in listed]


def test_the_rest_api_takes_the_apps_login_session(alice):
    user, pages = alice
    response = user.post("/api/tasks", json={"kind": "report", "params": REPORT})
    assert response.status_code == 202, response.text
    final = watch_to_the_end(user, pages, response.json())
    assert final["state"] == "succeeded" and final["result"]["sections"] == 6
    kinds = [k["kind"] for k in user.get("/api/kinds").json()["kinds"]]
    assert "report" in kinds


def test_bad_params_name_the_field_and_start_nothing(alice):
    user, _pages = alice
    before = len(user.get("/api/tasks").json()["tasks"])
    response = user.post("/reports", json={"sections": 0})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_params" and error["message"].startswith("sections:")
    assert len(user.get("/api/tasks").json()["tasks"]) == before


def test_another_user_sees_nothing_of_it(alice, bob):
    user, pages = alice
    other, other_pages = bob
    task = user.post("/reports", json={**REPORT, "sections": 2, "pause_s": 0}).json()
    watch_to_the_end(user, pages, task)
    for method, path in (
        ("GET", f"/api/tasks/{task['id']}"),
        ("GET", f"/api/tasks/{task['id']}/events"),
        ("POST", f"/api/tasks/{task['id']}/cancel"),
    ):
        response = other.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert task["id"] not in [t["id"] for t in other.get("/api/tasks").json()["tasks"]]
    ack = other_pages.subscribe(task["id"])
    assert ack["ok"] is False and ack["error"]["code"] == "not_found", ack
    # Alice's page heard of it (and of its end) long after bob's would have.
    assert task["id"] not in other_pages.created_ids()
    assert other_pages.history(task["id"]) == []


def test_without_signing_in_everything_is_401():
    anonymous = User()
    for method, path in (
        ("GET", "/api/tasks"),
        ("GET", "/api/kinds"),
        ("POST", "/api/tasks"),
        ("POST", "/reports"),
        ("GET", "/me"),
    ):
        response = anonymous.request(method, path, json={"kind": "report", "params": {}})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(EXAMPLE_URL, transports=["websocket"], wait_timeout=10)
    client.disconnect()


def test_a_wrong_password_and_a_logout_sign_nobody_in():
    stranger = User()
    for name, password in (("alice", "wrong"), ("mallory", "wrong")):
        response = stranger.post("/login", json={"user": name, "password": password})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    assert stranger.get("/me").status_code == 401
    user = User("alice")
    assert user.get("/me").json() == {"user": "alice"}
    assert user.post("/logout").status_code == 204
    assert user.get("/api/tasks").status_code == 401


def test_a_foreign_origin_is_refused_on_the_apps_own_routes_too():
    # The extension's origin check covers the whole app: a cross-site page cannot use
    # the signed-in user's cookie, on Taskbeam's routes or on the app's own.
    user = User("alice")
    for path in ("/reports", "/api/tasks", "/logout"):
        response = user.post(path, json={}, headers={"Origin": "https://evil.example"})
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "forbidden_origin"
