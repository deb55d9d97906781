"""A Socket.IO connect against the real web: Gunicorn with web/gunicorn.conf.py's
worker (fast or stock transport), the app of create_app, a real Redis; the stock
python-socketio client, WebSocket-only and long-polling then upgrade. Each AUTH_MODE
names the owner on connect (or refuses it with the contract's code), and a connect
costs no Flask request context (tests/unit/connect_probe.py counts them)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
import socketio

from taskbeam import protocol

# The python-socketio client's threads and sockets end after the test that used them.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-key/" * 4
ISS, AUD = "https://login.example", "taskbeam"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url():
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, "redis")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


class Web:
    """Gunicorn serving tests/unit/connect_probe.py's app on a port of its own."""

    def __init__(self, redis_url, fast, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(
            os.environ,
            REDIS_URL=redis_url,
            SECRET_KEY=secrets.token_urlsafe(32),
            ALLOWED_HOSTS="127.0.0.1",
            ALLOWED_ORIGINS=self.url,
            WEB_FAST_TRANSPORT="1" if fast else "0",
            TASKBEAM_NAMESPACE=f"t{self.port}",
            PYTHONPATH=str(Path(__file__).parent),
            **env,
        )
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        conf = str(ROOT / "web" / "gunicorn.conf.py")
        self.proc = subprocess.Popen(
            [
                gunicorn,
                "--config",
                conf,
                "--bind",
                f"127.0.0.1:{self.port}",
                "connect_probe:create()",
            ],
            env=environ,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.get("/readyz")[0] == 200, "the web's /readyz")

    def get(self, path, headers=None):
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()

    def probe(self, cookie=None):
        return json.loads(self.get("/probe", {"Cookie": cookie} if cookie else {})[2])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module", params=["fast", "stock"])
def transport(request):
    return request.param


@pytest.fixture(scope="module")
def session_web(redis_url, transport):
    web = Web(redis_url, transport == "fast")
    yield web
    web.stop()


def connect(web, transports, headers=None, auth=None):
    """A connected stock python-socketio client, or the refusal's data."""
    client = socketio.Client(reconnection=False)
    refused = []
    client.on("connect_error", refused.append)
    try:
        client.connect(
            web.url, headers=headers or {}, auth=auth, transports=transports, wait_timeout=10
        )
    except socketio.exceptions.ConnectionError:
        assert refused, "refused without a connect_error"
        return None, refused[0]
    return client, None


TRANSPORTS = {"websocket": ["websocket"], "upgrade": ["polling", "websocket"]}


@pytest.mark.parametrize("how", TRANSPORTS)
def test_a_session_cookie_names_the_owner_on_connect(session_web, how):
    _status, headers, _body = session_web.get("/api/tasks")
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    owner = session_web.probe(cookie)["owner"]
    client, refused = connect(session_web, TRANSPORTS[how], {"Cookie": cookie})
    assert refused is None
    try:
        if how == "upgrade":
            wait_for(lambda: client.transport() == "websocket", "the upgrade")
        seen = session_web.probe()["sockets"][client.get_sid()]
        assert seen["owner"] == owner
        assert protocol.owner_room(owner) in seen["rooms"]
        assert seen["environ"] == []  # the session keeps no handshake handler alive
        ack = client.call("subscribe", {"task_id": "0" * 32}, timeout=10)
        assert ack["ok"] is False and ack["error"]["code"] == "not_found"
    finally:
        client.disconnect()


def test_a_forged_cookie_is_no_owner(session_web):
    client, _ = connect(session_web, ["websocket"], {"Cookie": "taskbeam_session=eyJvIjoxfQ.x.y"})
    try:
        assert session_web.probe()["sockets"][client.get_sid()]["owner"] is None
    finally:
        client.disconnect()


def test_a_connect_pushes_no_flask_request_context(session_web):
    before = session_web.probe()["contexts"]
    for how in TRANSPORTS.values():
        client, _ = connect(session_web, how)
        client.call("subscribe", {"task_id": "0" * 32}, timeout=10)
        client.disconnect()
    wait_for(lambda: not session_web.probe()["sockets"], "the disconnects")
    assert session_web.probe()["contexts"] == before


def token(**over):
    now = int(time.time())
    claims = {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, **over}
    return jwt.encode(claims, SECRET)


@pytest.fixture(scope="module")
def jwt_web(redis_url, transport):
    web = Web(
        redis_url,
        transport == "fast",
        AUTH_MODE="jwt",
        JWT_SECRET=SECRET,
        JWT_ISSUER=ISS,
        JWT_AUDIENCE=AUD,
    )
    yield web
    web.stop()


def test_a_token_names_the_owner_from_auth_or_the_header(jwt_web):
    owner = protocol.owner_id("jwt", json.dumps([ISS, "alice"]))
    for headers, auth in (({}, {"token": token()}), ({"Authorization": f"Bearer {token()}"}, None)):
        client, refused = connect(jwt_web, ["websocket"], headers, auth)
        assert refused is None
        try:
            assert jwt_web.probe()["sockets"][client.get_sid()]["owner"] == owner
        finally:
            client.disconnect()


@pytest.mark.parametrize(
    "auth, code",
    [
        (None, "unauthenticated"),
        ({"token": "not-a-token"}, "unauthenticated"),
        ({"token": token(exp=int(time.time()) - 3600)}, "token_expired"),
    ],
)
def test_a_connect_without_a_good_token_is_refused(jwt_web, auth, code):
    client, refused = connect(jwt_web, ["websocket"], auth=auth)
    assert client is None
    assert refused["data"]["code"] == code and refused["data"]["message"]


@pytest.fixture(scope="module")
def header_web(redis_url, transport):
    web = Web(redis_url, transport == "fast", AUTH_MODE="header")
    yield web
    web.stop()


def test_the_proxy_header_names_the_owner_or_the_connect_is_refused(header_web):
    client, refused = connect(header_web, ["websocket"], {"X-Taskbeam-User": "bob"})
    assert refused is None
    try:
        seen = header_web.probe()["sockets"][client.get_sid()]
        assert seen["owner"] == protocol.owner_id("header", "bob")
    finally:
        client.disconnect()
    client, refused = connect(header_web, ["websocket"])
    assert client is None and refused["data"]["code"] == "unauthenticated"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_pages_vendored_client_connects_and_subscribes(session_web):
    """web/static/vendor's socket.io-client, as the page loads it, over a WebSocket."""
    bundle = next((ROOT / "web" / "static" / "vendor").glob("socket.io-*.min.js"))
    script = Path(__file__).with_name("vendored_client.js")
    done = subprocess.run(
        ["node", "--experimental-websocket", str(script), str(bundle), session_web.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    result = json.loads(done.stdout.splitlines()[0])
    assert result["connected"], (result, done.stderr)
    assert result["ack"]["error"]["code"] == "not_found"


# --- the WebSocket handshake of a client that opens with one, on the wire ----------

RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


def raw_open(web, key=RFC_KEY, version="13", host=None, origin=None, kept=None):
    """A WebSocket-only open over a plain socket: the status line, the headers and
    the first frame's text (None if none came), as the first read gave them; the
    connection stays open in ``kept`` if given."""
    lines = [
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{web.port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ] + ([f"Origin: {origin}"] if origin else [])
    with socket.create_connection(("127.0.0.1", web.port), 5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = s.recv(65536)
        if not data.startswith(b"HTTP/1.1 101"):  # an error answer ends the connection
            while more := s.recv(65536):
                data += more
        if kept is not None:
            kept.append(s.dup())
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    if status.split()[1] != "101":
        return status, headers, rest
    if not rest:
        return status, headers, None
    assert rest[0] == 0x81 and rest[1] < 126, rest  # one final, unmasked, short text frame
    return status, headers, rest[2 : 2 + rest[1]].decode()


@pytest.fixture
def fast_web(session_web, transport):
    if transport != "fast":
        pytest.skip("with WEB_FAST_TRANSPORT=0 the handshake is gevent-websocket's")
    return session_web


def test_the_101_answer_carries_the_open_packet(fast_web):
    session_web = fast_web
    status, headers, first = raw_open(session_web)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers["Upgrade"].lower() == "websocket" and headers["Connection"].lower() == "upgrade"
    assert headers["Sec-WebSocket-Accept"] == RFC_ACCEPT
    assert first is not None and first.startswith("0"), first
    opened = json.loads(first[1:])
    assert opened["upgrades"] == [] and len(opened["sid"]) == 20
    assert (opened["pingInterval"], opened["pingTimeout"]) == (7000, 7000)  # the defaults
    assert opened["maxPayload"] == 1024 * 1024


@pytest.mark.parametrize(
    "wrong, code",
    [
        ({"host": "evil.example"}, "421"),  # front.HostCheck
        ({"origin": "http://evil.example"}, "400"),  # engine.io's origin check
        ({"key": "c2hvcnQ="}, "400"),  # not 16 bytes
        ({"version": "8"}, "400"),
    ],
)
def test_a_bad_open_gets_an_error_answer_and_leaves_no_session(fast_web, wrong, code):
    """Not a 101 and then a close, as when gevent-websocket answered before the app."""
    session_web = fast_web
    status, _headers, _body = raw_open(session_web, **wrong)
    assert status.split()[1] == code, status
    wait_for(lambda: session_web.probe()["sessions"] == 0, "no engine.io session")


def test_an_open_past_the_connection_limit_is_a_quick_503(redis_url, transport):
    """WEB_MAX_CONNECTIONS (Gunicorn's worker_connections) counts open WebSockets too."""
    if transport != "fast":
        pytest.skip("with WEB_FAST_TRANSPORT=0 the handshake is gevent-websocket's")
    web = Web(redis_url, True, WEB_MAX_CONNECTIONS="2")
    kept = []
    try:
        assert [raw_open(web, kept=kept)[0].split()[1] for _ in range(2)] == ["101", "101"]
        status, headers, _body = raw_open(web, kept=kept)
        assert status.split()[1] == "503" and headers["Retry-After"] == "1"
        assert web.probe()["sessions"] == 2
    finally:
        for s in kept:
            s.close()
        web.stop()
