"""Security by default, checked on the running stack."""

import json
import os
import socket
import subprocess
import time

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
    out = compose(
        "exec", "-T", "redis", "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping", check=False
    )
    assert "NOAUTH" in out and "PONG" not in out, out


def start_web_with(setting):
    """Start a one-off `web` with ``setting`` (NAME=value); its exit code and output."""
    done = subprocess.run(
        ["docker", "compose", "run", "--rm", "--no-deps", "-T", "-e", setting, "web"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr + done.stdout


def test_a_placeholder_secret_key_stops_the_web_service_with_a_clear_message():
    status, output = start_web_with("SECRET_KEY=change-me")
    assert status != 0
    assert "SECRET_KEY is missing, a placeholder" in output
    assert "Traceback" not in output


def test_socketio_refuses_a_foreign_origin(api):
    handshake = "/socket.io/?EIO=4&transport=polling"
    foreign = api.request("GET", handshake, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 400 and "sid" not in foreign.text
    own = api.request("GET", handshake, headers={"Origin": BASE_URL})
    assert own.status_code == 200 and '"sid"' in own.text


def test_the_page_sends_csp_and_the_usual_security_headers():
    headers = requests.get(f"{BASE_URL}/", timeout=5).headers
    csp = headers["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ):
        assert directive in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "Server" not in headers or "/" not in headers["Server"], "no version disclosed"
    cookie = requests.get(f"{BASE_URL}/api/tasks", timeout=5).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_task_creation_is_rate_limited_per_session_with_retry_after(api):
    # The test stack allows 60 creations a minute, in fixed windows (the minutes of the
    # clock the containers share). Start early in a window: a reset while this runs would
    # allow 60 more, past Nginx's per-address burst (80), and the tests after this one
    # would then meet that limit instead.
    if time.time() % 60 > 45:
        time.sleep(60 - time.time() % 60 + 0.5)
    created = []
    for _ in range(125):
        response = api.request(
            "POST", "/api/tasks", json={"kind": "simulate", "params": {"steps": 1, "step_ms": 0}}
        )
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


@pytest.mark.parametrize(
    "event, payload",
    [
        ("subscribe", {"task_id": "x" * 200_000}),
        ("subscribe", {"task_id": ["a"], "after": {}}),
        ("subscribe", [1, 2, 3]),
        ("unsubscribe", 42),
        ("no_such_event", {"task_id": "x"}),
        ("subscribe", {"task_id": "a-task-of-somebody-else", "after": 0}),
    ],
)
def test_malformed_socket_payloads_get_error_acks_and_the_connection_stays_usable(
    api, watcher, event, payload
):
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


def test_a_placeholder_redis_password_stops_the_web_service_with_a_clear_message():
    status, output = start_web_with("REDIS_URL=redis://:change-me@redis:6379/0")
    assert status != 0
    assert "REDIS_URL has a placeholder password" in output
    assert "Traceback" not in output


def test_session_cookie_secure_marks_the_cookie_secure():
    script = (
        "from gevent import monkey; monkey.patch_all(); "
        "import os; from taskbeam.web import create_app; "
        "print(create_app().test_client().get('/healthz').headers['Set-Cookie'], "
        "flush=True); os._exit(0)"
    )
    done = subprocess.run(
        [
            "docker",
            "compose",
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "-e",
            "SESSION_COOKIE_SECURE=1",
            "web",
            "python",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "; Secure" in done.stdout
    # The __Host- prefix: a browser keeps it only if Secure, for this host and path /.
    assert done.stdout.startswith("__Host-taskbeam_session=") and "; Path=/" in done.stdout
    assert "domain=" not in done.stdout.lower()
    # Off by default: the stack under test is plain HTTP.
    assert "Secure" not in requests.get(f"{BASE_URL}/api/tasks", timeout=5).headers["Set-Cookie"]


def websocket_opening(host, port):
    """What the server sends on a direct WebSocket open with this Host: the handshake
    and, if a session opened, Engine.IO's open packet (read until it, a whole error
    answer or EOF)."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        raw.sendall(
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {host}\r\nOrigin: http://{host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        data = b""
        while b'"sid"' not in data and not whole_error_answer(data):
            chunk = raw.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def whole_error_answer(data):
    """``data`` holds an HTTP answer other than 101, with all of its body."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found or head.startswith(b"HTTP/1.1 101"):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_an_unknown_host_name_gets_421_on_the_api_and_the_socket_handshake(api):
    port = BASE_URL.rsplit(":", 1)[1]
    rebound = {"Host": f"rebind.example:{port}", "Origin": f"http://rebind.example:{port}"}
    for path in ("/api/tasks", "/socket.io/?EIO=4&transport=polling"):
        response = api.request("GET", path, headers=rebound)
        assert response.status_code == 421, (path, response.text)
        assert response.json()["error"]["code"] == "misdirected_request"
    assert (
        api.request(
            "POST", "/api/tasks", headers=rebound, json={"kind": "simulate", "params": {"steps": 1}}
        ).status_code
        == 421
    )
    # A WebSocket that opens directly (no polling first) is refused too: with the
    # fast transport's handshake a 421; with gevent-websocket's (WEB_FAST_TRANSPORT=0),
    # which answers 101 before the app runs, no Engine.IO session opens (no "sid")
    # and the connection ends.
    refused = websocket_opening(f"rebind.example:{port}", port)
    assert b'"sid"' not in refused
    if not refused.startswith(b"HTTP/1.1 101"):
        assert refused.startswith(b"HTTP/1.1 421") and b"misdirected_request" in refused
    assert b'"sid"' in websocket_opening(f"127.0.0.1:{port}", port)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert api.request("GET", "/api/tasks", headers={"Host": host}).status_code == 200


def assert_security_headers(headers):
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"


def test_vendor_files_and_downloads_keep_the_security_headers(api):
    vendor = requests.get(f"{BASE_URL}/vendor/socket.io-4.8.1.min.js", timeout=5)
    assert vendor.status_code == 200 and "immutable" in vendor.headers["Cache-Control"]
    assert_security_headers(vendor.headers)
    task = api.create("export", limit=10)
    done = wait_until(
        lambda: (s := api.snapshot(task["id"]))["state"] in ("succeeded", "failed") and s,
        60,
        what="the export to finish",
    )
    assert done["state"] == "succeeded", done
    download = api.request("GET", done["result"]["download_url"])
    assert download.status_code == 200 and "no-store" in download.headers["Cache-Control"]
    assert_security_headers(download.headers)
    refused = api.request("GET", "/api/tasks/AAAAAAAAAAAAAAAA")  # an error from the app
    assert_security_headers(refused.headers)


def test_malformed_input_gets_the_contract_error_not_a_500(api):
    nested = api.request(
        "POST", "/api/tasks", data="[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert nested.status_code == 400 and nested.json()["error"]["code"] == "invalid_json"
    task = api.create(steps=1, step_ms=0)
    for after in ("²", "١٢", "9" * 30):
        response = api.request("GET", f"/api/tasks/{task['id']}/events", params={"after": after})
        assert response.status_code == 400, (after, response.text)
        assert response.json()["error"]["code"] == "invalid_params"
    # "<id>:events" would name the task's event stream: a known id and an unknown
    # one must look alike.
    for path in (
        f"/api/tasks/{task['id']}:events",
        "/api/tasks/AAAAAAAAAAAAAAAA:events",
        f"/api/tasks/{task['id']}:events/events",
    ):
        response = api.request("GET", path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"


def test_flowers_password_is_not_on_any_command_line():
    env = env_file()
    compose("--profile", "monitoring", "up", "-d", "--wait", "flower", timeout=180)
    try:
        cmdlines = compose(
            "exec",
            "-T",
            "flower",
            "sh",
            "-c",
            "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done",
        )
        assert "flower" in cmdlines
        assert env["FLOWER_PASSWORD"] not in cmdlines
        ok = requests.get(
            f"{BASE_URL}/flower/",
            timeout=10,
            auth=(env.get("FLOWER_USER", "admin"), env["FLOWER_PASSWORD"]),
        )
        assert ok.status_code == 200
        assert requests.get(f"{BASE_URL}/flower/", timeout=10).status_code == 401
    finally:
        compose("--profile", "monitoring", "stop", "flower", timeout=60)
        compose("--profile", "monitoring", "rm", "-f", "flower", timeout=60)


# Connects from inside a container to every address given, port 8000; prints one
# line of JSON: {address: "open" | the error's name}.
PROBE_WEB = r"""
import json, socket, sys
seen = {}
for address in sys.argv[1:]:
    try:
        socket.create_connection((address, 8000), timeout=3).close()
        seen[address] = "open"
    except OSError as exc:
        seen[address] = type(exc).__name__
print(json.dumps(seen))
"""


def web_addresses():
    """Every address of every web container, on all its networks, and the name."""
    addresses = ["web"]
    for cid in compose("ps", "-q", "web").split():
        addresses += docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid
        ).split()
    return addresses


def test_only_nginx_reaches_the_web_service():
    # From a worker (on the network web shares with Redis): by name and by each of
    # web's addresses, nothing on port 8000 answers. So no container but Nginx can
    # send web a forged X-Forwarded-For or identity header.
    addresses = web_addresses()
    out = compose("exec", "-T", "worker", "python", "-c", PROBE_WEB, *addresses)
    reached = {a: r for a, r in json.loads(out).items() if r == "open"}
    assert not reached, f"a worker reached web:8000 at {reached}"
    # Nginx does reach it (the API test suite goes that way; this says so directly).
    out = compose("exec", "-T", "nginx", "wget", "-q", "-O", "-", "http://web:8000/healthz")
    assert out.strip(), out


# What each service's Redis user must not do (redis/start.sh): its role's forbidden
# commands, and for web any key outside its deployment's namespace.
FORBIDDEN = [
    ("web", "FLUSHALL"),
    ("web", "CONFIG GET maxmemory"),
    ("web", "GET not-taskbeam"),
    ("web", "ACL LIST"),
    ("worker", "ACL SETUSER intruder on >pw +@all"),
    ("worker", "CONFIG SET maxmemory 1"),
    ("worker", "FLUSHALL"),
    ("flower", "FLUSHDB"),
    ("flower", "ACL LIST"),
    ("flower", "KEYS *"),
]


def redis_cli_as(user, *command):
    password = env_file()[f"REDIS_{user.upper()}_PASSWORD"]
    return compose(
        *("exec", "-T", "-e", f"REDISCLI_AUTH={password}", "redis"),
        *("redis-cli", "--user", user, *command),
        check=False,
    )


@pytest.mark.parametrize(("user", "command"), FORBIDDEN)
def test_each_redis_user_is_refused_what_its_role_does_not_do(user, command):
    out = redis_cli_as(user, *command.split())
    assert "NOPERM" in out, out


def test_each_service_connects_as_its_own_redis_user():
    # Every user may do its role's work (the suite runs on them); here, who is connected.
    assert redis_cli_as("web", "ACL", "WHOAMI").strip() == "web"
    clients = compose("exec", "-T", "redis", "redis-cli", "CLIENT", "LIST")
    users = {field.split("=", 1)[1] for field in clients.split() if field.startswith("user=")}
    assert {"web", "worker"} <= users, clients
    # The default (all-powerful) user: only this redis-cli; no service has its password.
    default = [line for line in clients.splitlines() if " user=default " in f"{line} "]
    assert len(default) == 1 and "cmd=client|list" in default[0], default
    admin = env_file()["REDIS_PASSWORD"]
    for service in ("web", "worker"):
        assert admin not in compose("exec", "-T", service, "env"), service
