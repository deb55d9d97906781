"""Security by default, checked on the running stack."""
import os
import subprocess

import pytest
import requests

from conftest import BASE_URL, Watcher, compose, docker, wait_until


def env_file():
    """The test stack's env file (written by tests/run.sh with fresh secrets)."""
    path = os.environ["COMPOSE_ENV_FILES"].split(",")[0]
    with open(path) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line and line[0] != "#")


def test_no_secret_is_baked_into_an_image():
    env = env_file()
    secrets = [env["SECRET_KEY"], env["REDIS_PASSWORD"]]
    tag = env.get("IMAGE_TAG") or "latest"
    for image in (f"taskbeam-app:{tag}", f"taskbeam-nginx:{tag}"):
        layers = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
        config = docker("image", "inspect", "--format", "{{json .Config}}", image)
        for secret in secrets:
            assert secret not in layers and secret not in config, f"a secret is in {image}"


def test_redis_refuses_clients_without_the_password():
    out = compose("exec", "-T", "redis", "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping",
                  check=False)
    assert "NOAUTH" in out and "PONG" not in out, out


def test_a_placeholder_secret_key_stops_the_web_service_with_a_clear_message():
    done = subprocess.run(["docker", "compose", "run", "--rm", "--no-deps", "-T",
                           "-e", "SECRET_KEY=change-me", "web"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "SECRET_KEY is missing, a placeholder" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_socketio_refuses_a_foreign_origin(api):
    handshake = "/socket.io/?EIO=4&transport=polling"
    foreign = api.request("GET", handshake, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 400 and "sid" not in foreign.text
    own = api.request("GET", handshake, headers={"Origin": BASE_URL})
    assert own.status_code == 200 and '"sid"' in own.text


def test_the_page_sends_csp_and_the_usual_security_headers():
    headers = requests.get(f"{BASE_URL}/", timeout=5).headers
    csp = headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'",
                      "object-src 'none'"):
        assert directive in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "Server" not in headers or "/" not in headers["Server"], "no version disclosed"
    cookie = requests.get(f"{BASE_URL}/api/tasks", timeout=5).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_task_creation_is_rate_limited_per_session_with_retry_after(api):
    # The test stack allows 60 creations a minute; a fixed window can reset once
    # while this runs, so at most two windows' worth are needed to see the limit.
    created = []
    for _ in range(125):
        response = api.request("POST", "/api/tasks",
                               json={"kind": "simulate", "params": {"steps": 1, "step_ms": 0}})
        if response.status_code == 429:
            break
        assert response.status_code == 202
        created.append(response.json()["id"])
    assert response.status_code == 429, "no rate limit after 125 creations"
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert len(created) >= 60
    listed = {t["id"] for t in api.request("GET", "/api/tasks").json()["tasks"]}
    assert listed == set(created), "a refused creation must not leave a task behind"


@pytest.mark.parametrize("event, payload", [
    ("subscribe", {"task_id": "x" * 200_000}),
    ("subscribe", {"task_id": ["a"], "after": {}}),
    ("subscribe", [1, 2, 3]),
    ("unsubscribe", 42),
    ("no_such_event", {"task_id": "x"}),
    ("subscribe", {"task_id": "a-task-of-somebody-else", "after": 0}),
])
def test_malformed_socket_payloads_get_error_acks_and_the_connection_stays_usable(
        api, watcher, event, payload):
    ack = watcher.sio.call(event, payload, timeout=10)
    assert ack["ok"] is False
    assert ack["error"]["code"] in ("invalid_params", "not_found", "unknown_event")
    task = api.create(steps=1, step_ms=0)
    assert watcher.follow(task["id"])["ok"]
    watcher.wait_terminal([task["id"]], timeout=30)


def test_a_socket_message_over_the_limit_closes_only_that_connection(api):
    big = Watcher(api, reconnect=False).connect()
    big.sio.emit("subscribe", {"task_id": "x" * (1024 * 1024 + 100)})
    wait_until(lambda: not big.sio.connected, 10, what="the oversized sender to be dropped")
    other = Watcher(api).connect()
    try:
        task = api.create(steps=1, step_ms=0)
        assert other.follow(task["id"])["ok"]
    finally:
        other.close()
        big.close()
