"""AUTH_MODE jwt and header, and HTTPS, against the real stack (docs/identity.md).

Run by tests/run.sh's identity pass, which recreates `web` and `nginx` once per mode
and sets TEST_AUTH_MODE (skipped in the other passes):
- ``tls``: session mode behind nginx/tls.yml: TLS versions, HSTS, the Secure cookie, redirect.
- ``jwt``: HS256 behind TLS (tokens minted here: the demo login refuses TLS): every call
  as the owner, as another user and without credentials; the attack tokens; a token
  expiring under an open socket;
  two Chromium contexts of one user over HTTPS with the local CA trusted (NSS db).
- ``header``: the identity header from the auth proxy's address only.
"""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import jwt
import pytest
import requests
import socketio
from conftest import BASE_URL, TERMINAL, compose, wait_until

MODE = os.environ.get("TEST_AUTH_MODE")
HTTPS_URL = os.environ.get("TASKBEAM_HTTPS_URL", "https://localhost:18443")
CA = os.environ.get("TEST_CA", "")
SECRET = os.environ.get("TEST_JWT_SECRET", "")
ISS, AUD = os.environ.get("TEST_JWT_ISSUER", ""), os.environ.get("TEST_JWT_AUDIENCE", "")
PROXY_HEADER = "X-Auth-Request-User"

pytestmark = pytest.mark.skipif(MODE is None, reason="run by tests/run.sh's identity pass")


def only(mode):
    return pytest.mark.skipif(MODE != mode, reason=f"runs in the {mode} pass")


def token_for(user, ttl=600, **over):
    now = int(time.time())
    claims = {"sub": user, "iss": ISS, "aud": AUD, "iat": now, "exp": now + ttl, **over}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, "HS256")


class Client:
    """One browser or API client of one user (None: no credentials)."""

    def __init__(self, user, token=None):
        self.user = user
        self.base = HTTPS_URL if MODE == "jwt" else BASE_URL
        self.http = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would override the session's CA.
        self.http.trust_env = False
        self.http.verify = CA or True
        self.token = token or (token_for(user) if user and MODE == "jwt" else None)
        if MODE == "jwt" and self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"
        if MODE == "header" and user:
            self.http.headers[PROXY_HEADER] = user  # as the auth proxy would
        self.http.headers["Origin"] = self.base

    def request(self, method, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        return self.http.request(method, f"{self.base}{path}", **kwargs)

    def create(self, **params):
        response = self.request(
            "POST", "/api/tasks", json={"kind": params.pop("kind", "simulate"), "params": params}
        )
        assert response.status_code == 202, response.text
        return response.json()

    def socket(self, auth_token=None, sio=None):
        """A connected Socket.IO client; events land in ``.events`` and ``.created``."""
        sio = sio or socketio.Client(reconnection=False, http_session=self.http)
        sio.events, sio.created, sio.errors = [], [], []
        sio.on("task_update", sio.events.append)
        sio.on("task_created", sio.created.append)
        sio.on("error", sio.errors.append)
        headers = {PROXY_HEADER: self.user} if MODE == "header" and self.user else {}
        token = auth_token or self.token
        sio.connect(
            self.base,
            transports=["websocket"],
            wait_timeout=10,
            headers=headers,
            auth={"token": token} if MODE == "jwt" and token else None,
        )
        return sio


def refused_401(response, code="unauthenticated"):
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers.get("WWW-Authenticate"), response.headers


def connect_refusal(client, **kwargs):
    """The ``code`` of the server's connect_error for this client's credentials."""
    sio = socketio.Client(reconnection=False, http_session=client.http)
    refusals = []
    sio.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.socket(sio=sio, **kwargs)
    assert refusals, "no connect_error"
    return refusals[0]["data"]["code"]


@pytest.fixture(scope="module")
def alice():
    return Client("alice")


@pytest.fixture(scope="module")
def finished_export(alice):
    task = alice.create(kind="export", format="csv", date_from="2025-12-01")
    wait_until(
        lambda: alice.request("GET", f"/api/tasks/{task['id']}").json()["state"] in TERMINAL,
        120,
        interval=0.5,
        what="the export to finish",
    )
    return task


@pytest.mark.skipif(MODE not in ("jwt", "header"), reason="jwt and header passes")
def test_owner_from_two_clients_and_refused_for_others(alice, finished_export):
    second = Client("alice")  # another browser or an API client of the same user
    watcher = second.socket()
    try:
        task = alice.create(steps=30, step_ms=200)
        # Tasks follow the user: the other client hears of it and lists it.
        wait_until(lambda: any(t["id"] == task["id"] for t in watcher.created), 15, what="created")
        listed = {t["id"] for t in second.request("GET", "/api/tasks").json()["tasks"]}
        assert {task["id"], finished_export["id"]} <= listed
        ack = watcher.call("subscribe", {"task_id": task["id"], "after": 0}, timeout=10)
        assert ack["ok"], ack
        wait_until(lambda: any(e["progress"] > 0 for e in watcher.events), 30, what="progress")
        exported = second.request("GET", f"/api/tasks/{finished_export['id']}/download")
        assert exported.status_code == 200 and exported.content.startswith(b"id,")

        for other in (Client("bob"), Client(None)):
            expect = (lambda r: refused_401(r)) if other.user is None else None
            calls = [
                ("GET", f"/api/tasks/{task['id']}"),
                ("GET", f"/api/tasks/{task['id']}/events"),
                ("POST", f"/api/tasks/{task['id']}/cancel"),
                ("GET", f"/api/tasks/{finished_export['id']}/download"),
                ("DELETE", f"/api/tasks/{finished_export['id']}"),
            ]
            for method, path in calls:
                response = other.request(method, path)
                if expect:
                    expect(response)
                else:
                    assert response.status_code == 404, (method, path, response.text)
                    assert response.json()["error"]["code"] == "not_found"
            if other.user is None:
                refused_401(other.request("GET", "/api/tasks"))
                refused_401(other.request("POST", "/api/tasks", json={"kind": "simulate"}))
                assert connect_refusal(other) == "unauthenticated"
            else:
                assert task["id"] not in {
                    t["id"] for t in other.request("GET", "/api/tasks").json()["tasks"]
                }
                sock = other.socket()
                ack = sock.call("subscribe", {"task_id": task["id"]}, timeout=10)
                sock.disconnect()
                assert ack["error"]["code"] == "not_found"
                assert not sock.created  # bob never heard of alice's task

        cancelled = alice.request("POST", f"/api/tasks/{task['id']}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        wait_until(
            lambda: any(e["state"] == "cancelled" for e in watcher.events), 30, what="cancelled"
        )
    finally:
        watcher.disconnect()


# --- jwt: attack tokens over REST and Socket.IO ---------------------------------


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def attack_tokens():
    from cryptography.hazmat.primitives.asymmetric import rsa

    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    none_body = b64(json.dumps({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now + 600}).encode())
    return {
        "expired": (token_for("alice", ttl=-120), "token_expired"),
        "not yet valid": (token_for("alice", nbf=now + 600), "unauthenticated"),
        "wrong audience": (token_for("alice", aud="another-app"), "unauthenticated"),
        "wrong issuer": (token_for("alice", iss="https://evil.example"), "unauthenticated"),
        "wrong signature": (
            jwt.encode({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now + 600}, "x" * 64),
            "unauthenticated",
        ),
        "alg none": (f"{none_header}.{none_body}.", "unauthenticated"),
        "RS256 where HS256 is configured": (
            jwt.encode(
                {"sub": "alice", "iss": ISS, "aud": AUD, "exp": now + 600}, rsa_key, "RS256"
            ),
            "unauthenticated",
        ),
    }


@only("jwt")
def test_attack_tokens_are_refused_on_rest_and_sockets(alice):
    for name, (token, code) in attack_tokens().items():
        response = alice.request("GET", "/api/tasks", headers={"Authorization": f"Bearer {token}"})
        refused_401(response, code)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], name
        assert connect_refusal(Client(None), auth_token=token) == code, name


@only("jwt")
def test_a_token_expiring_under_an_open_socket_closes_it_and_a_fresh_one_resumes(alice):
    task = alice.create(steps=40, step_ms=200)
    short = Client("alice", token=token_for("alice", ttl=4))
    sock = short.socket()
    ack = sock.call("subscribe", {"task_id": task["id"], "after": 0}, timeout=30)
    assert ack["ok"], ack
    closed = threading.Event()
    sock.on("disconnect", lambda *a: closed.set())
    # exp + the server's leeway (JWT_LEEWAY_S=0 in the identity pass) + delivery.
    wait_until(lambda: sock.errors, 30, what="the token_expired error event")
    assert sock.errors[0]["code"] == "token_expired"
    wait_until(closed.is_set, 10, what="the server to close the socket")
    seen = max([0] + [e["seq"] for e in sock.events + ack["missed"]])
    fresh = alice.socket()  # reconnect with a fresh token and resume with `after`
    try:
        resumed = fresh.call("subscribe", {"task_id": task["id"], "after": seen}, timeout=30)
        assert resumed["ok"], resumed
        assert all(e["seq"] > seen for e in resumed["missed"])
        wait_until(
            lambda: any(e["state"] in TERMINAL for e in fresh.events + resumed["missed"]),
            60,
            what="the task to finish on the fresh socket",
        )
    finally:
        fresh.disconnect()


# --- header: only the auth proxy's hop is believed ------------------------------------


@only("header")
def test_a_client_sent_identity_header_is_ignored():
    forged = requests.get(
        f"{BASE_URL}/api/tasks", headers={"X-Taskbeam-User": "alice"}, timeout=10
    )  # the app's own header, sent by a client: Nginx replaces it
    refused_401(forged)
    # The auth proxy's header from an address that is not the auth proxy's (web, the
    # one container besides Nginx on the front network): dropped by Nginx.
    script = (
        "import urllib.request, urllib.error\n"
        "r = urllib.request.Request('http://nginx:8080/api/tasks',"
        " headers={'X-Auth-Request-User': 'alice', 'Host': 'localhost'})\n"
        "try:\n    print(urllib.request.urlopen(r, timeout=10).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    out = compose("exec", "-T", "web", "python", "-c", script)
    assert out.strip() == "401", out


# --- TLS ----------------------------------------------------------------------------


def curl(*args):
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", CA, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@only("tls")
def test_https_refuses_old_tls_sends_hsts_and_a_secure_cookie():
    # OpenSSL 3's default security level makes curl itself refuse TLS 1.0/1.1; at level
    # 0 it offers them (it completes a TLS 1.0 and 1.1 handshake with `openssl s_server`
    # allowing them), so the refusal seen here is the server's.
    for version in ("1.0", "1.1"):
        done = curl(
            *("-o", "/dev/null", "--ciphers", "DEFAULT@SECLEVEL=0"),
            *(f"--tlsv{version}", "--tls-max", version, HTTPS_URL + "/"),
        )
        assert done.returncode != 0, f"TLS {version} was accepted"
        assert "alert protocol version" in done.stderr or "unsupported protocol" in done.stderr, (
            done.stderr
        )
    done = curl("-D", "-", "-o", "/dev/null", "--tlsv1.2", HTTPS_URL + "/api/tasks")
    assert done.returncode == 0, done.stderr
    headers = done.stdout.lower()
    assert "strict-transport-security: max-age=31536000" in headers
    cookie = next(line for line in headers.splitlines() if line.startswith("set-cookie:"))
    assert "; secure" in cookie and "httponly" in cookie
    assert cookie.startswith("set-cookie: __host-taskbeam_session=") and "; path=/" in cookie
    plain = requests.get(f"{BASE_URL}/api/tasks", allow_redirects=False, timeout=10)
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith(HTTPS_URL.replace("localhost", "127.0.0.1"))
    assert "strict-transport-security" not in {h.lower() for h in plain.headers}
    # Without the local CA the certificate is not trusted: the check above is real.
    untrusted = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", HTTPS_URL + "/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert untrusted.returncode != 0


# --- two Chromium contexts of one user over HTTPS -----------------------------------


@pytest.fixture(scope="module")
def trusting_browser():
    """Chromium with the local CA in its NSS database (a HOME of its own), not
    ignore_https_errors; and one without it, to show the trust is what makes it work."""
    from playwright.sync_api import sync_playwright
    from test_page import CHROMIUM, CHROMIUM_ARGS

    home = tempfile.mkdtemp(prefix="taskbeam-nss-")
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "taskbeam-test-ca", "-i", CA],
        check=True,
    )
    plain_home = tempfile.mkdtemp(prefix="taskbeam-noca-")
    with sync_playwright() as pw:
        env = {**os.environ, "HOME": home}
        trusting = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=env)
        plain_env = {**os.environ, "HOME": plain_home}
        plain = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=plain_env)
        yield trusting, plain
        trusting.close()
        plain.close()
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(plain_home, ignore_errors=True)


def signed_in_page(browser, user):
    from playwright.sync_api import expect

    context = browser.new_context()
    # The app's own login would hand the page its token; the demo login
    # (AUTH_DEV_LOGIN) refuses to start behind TLS, so the test plays that part.
    token = json.dumps(token_for(user))
    context.add_init_script(f"localStorage.setItem('taskbeam.token', {token})")
    page = context.new_page()
    page.goto(HTTPS_URL + "/")
    expect(page.get_by_role("status")).to_have_text("Connected", timeout=20_000)
    return context, page


@only("jwt")
def test_two_browsers_of_one_user_over_https_see_the_same_task_live(trusting_browser):
    from playwright.sync_api import Error, expect

    trusting, plain = trusting_browser
    untrusted = plain.new_context().new_page()
    with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
        untrusted.goto(HTTPS_URL + "/")
    untrusted.context.close()

    first_ctx, first = signed_in_page(trusting, "carol")
    second_ctx, second = signed_in_page(trusting, "carol")
    try:
        first.get_by_label("Kind", exact=True).select_option("simulate")
        first.get_by_label("Steps", exact=True).fill("30")
        first.get_by_role("button", name="Start").click()
        task = second.locator("li.task").first
        expect(task).to_be_visible(timeout=15_000)
        bar = task.get_by_role("progressbar")

        def progressing():
            value = bar.get_attribute("aria-valuenow")
            return value is not None and 0 < float(value)

        wait_until(progressing, 30, interval=0.2, what="live progress in the second browser")
        expect(task.locator(".state")).to_have_text("succeeded", timeout=60_000)
        assert second.evaluate("location.protocol") == "https:"
    finally:
        first_ctx.close()
        second_ctx.close()


# --- two tabs of one browser: tasks appear wherever their owner looks -----------------


def tab_context(browser, user):
    """A browser context (its tabs share it) whose requests carry ``user``'s credentials
    as the page's would: the token the page keeps (jwt), the auth proxy's header."""
    if MODE == "jwt":
        context = browser.new_context()
        token = token_for(user)
        context.add_init_script(f"localStorage.setItem('taskbeam.token', {json.dumps(token)})")
        return context, HTTPS_URL, Client(user, token=token)
    context = browser.new_context(extra_http_headers={PROXY_HEADER: user})
    return context, BASE_URL, Client(user)


@pytest.mark.skipif(MODE not in ("jwt", "header"), reason="jwt and header passes")
@pytest.mark.parametrize("start_from", ["second tab", "api"])
def test_two_tabs_a_task_started_elsewhere_appears_live(trusting_browser, start_from):
    from test_tabs import COUNTDOWN, MARK, assert_appears_live, open_tab, start_in_tab

    user = f"tabs-{start_from.replace(' ', '-')}-{int(time.time() * 1000)}"  # no tasks yet
    context, url, client = tab_context(trusting_browser[0], user)
    try:
        first = open_tab(context, url)
        first.evaluate(MARK)
        if start_from == "api":
            task = client.create(kind="countdown", **COUNTDOWN["params"])
        else:
            task = start_in_tab(open_tab(context, url))
        assert_appears_live(first, task)
    finally:
        context.close()


# --- taskbeam.submit() from the worker's container ------------------------------------

SUBMIT = """import json, sys, taskbeam
print(json.dumps(taskbeam.submit(sys.argv[1], json.loads(sys.argv[2]), owner=sys.argv[3])))"""


def submit_in_worker(kind, params, owner):
    """``taskbeam.submit()`` in a worker container, the web's AUTH_MODE and JWT_ISSUER
    given (the identity pass recreates only web and nginx); the finished process."""
    return subprocess.run(
        ["docker", "compose", "exec", "-T", "-e", "AUTH_MODE=jwt", "-e", f"JWT_ISSUER={ISS}"]
        + ["worker", "python", "-c", SUBMIT, kind, json.dumps(params), owner],
        capture_output=True,
        text=True,
        timeout=60,
    )


@only("jwt")
def test_submit_from_python_reaches_its_owner_live_and_no_one_else(alice):
    bob = Client("bob")
    alice_socket, bob_socket = alice.socket(), bob.socket()
    try:
        done = submit_in_worker("countdown", {"start": 5, "pause_s": 0.1}, "alice")
        assert done.returncode == 0, done.stderr
        task = json.loads(done.stdout.strip().splitlines()[-1])
        assert task["kind"] == "countdown" and task["state"] == "queued"
        wait_until(
            lambda: any(t["id"] == task["id"] for t in alice_socket.created), 15, what="created"
        )
        listed = alice.request("GET", "/api/tasks").json()["tasks"]
        assert task["id"] in {t["id"] for t in listed}
        wait_until(
            lambda: alice.request("GET", f"/api/tasks/{task['id']}").json()["state"] in TERMINAL,
            60,
            interval=0.3,
            what="the submitted task to finish",
        )
        snap = alice.request("GET", f"/api/tasks/{task['id']}").json()
        assert snap["state"] == "succeeded" and snap["result"] == {"counted": 5, "said": "liftoff"}

        assert task["id"] not in {t["id"] for t in bob.request("GET", "/api/tasks").json()["tasks"]}
        assert bob.request("GET", f"/api/tasks/{task['id']}").status_code == 404
        assert not any(t["id"] == task["id"] for t in bob_socket.created)
    finally:
        alice_socket.disconnect()
        bob_socket.disconnect()


@only("jwt")
@pytest.mark.parametrize(
    "kind, params, error, field",
    [
        ("countdown", {"start": 0}, "ParamError", "start"),
        ("countdown", {"shout": "yes"}, "ParamError", "shout"),
        ("countdown", {"colour": "red"}, "ParamError", "colour"),
        ("no_such_kind", {}, "UnknownKind", "kind"),
    ],
)
def test_submit_with_bad_params_raises_the_apis_errors(alice, kind, params, error, field):
    before = alice.request("GET", "/api/tasks").json()
    done = submit_in_worker(kind, params, "alice")
    assert done.returncode != 0, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"taskbeam.registry.{error}: {field}"), done.stderr
    assert alice.request("GET", "/api/tasks").json() == before
