"""Admission control (fastws.admission) in Gunicorn's handler class, against a real
pywsgi server, python-socketio server and clients: a connect past the rate gets a
quick 503 that the stock client retries after its backoff."""

import json
import threading

import pytest
import socketio
import websockets.sync.client
from test_fastws_contract import Server, in_thread, wait_for
from websockets.exceptions import InvalidStatus

from taskbeam.web.fastws import admission


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_gate_admits_a_seconds_worth_then_refuses_until_refilled():
    clock = Clock()
    gate = admission.Gate(2, clock=clock)
    assert gate.admit() is None and gate.admit() is None
    assert gate.admit() == pytest.approx(0.5)
    clock.now += 0.5
    assert gate.admit() is None
    assert gate.admit() == pytest.approx(0.5)
    assert gate.refused == 2
    clock.now += 60  # refills to a second's worth, no more
    assert [gate.admit() for _ in range(3)][:2] == [None, None]


def test_rate_zero_admits_everything():
    gate = admission.Gate(0)
    assert all(gate.admit() is None for _ in range(1000))


@pytest.mark.parametrize(
    ("path", "query", "new"),
    [
        ("/socket.io/", "EIO=4&transport=websocket", True),
        ("/socket.io/", "EIO=4&transport=polling&t=x", True),
        ("/socket.io/", "EIO=4&transport=websocket&sid=abc", False),
        ("/socket.io/", "EIO=4&transport=polling&sid=abc", False),
        ("/readyz", "", False),
        ("/api/tasks", "", False),
    ],
)
def test_only_new_engineio_sessions_count(path, query, new):
    assert admission.new_session({"PATH_INFO": path, "QUERY_STRING": query}) is new


@pytest.fixture
def gated():
    """A server whose gate admits one connect a second (its token taken at once)."""
    server = Server(ping_interval=5, ping_timeout=5)
    gate = admission.configure(1)
    yield server, gate
    admission.gate = None
    server.stop()


def test_a_connect_past_the_rate_gets_503_with_retry_after_before_the_handshake(gated):
    server, gate = gated
    ws = in_thread(lambda: websockets.sync.client.connect(server.url, legacy=True))
    try:
        assert in_thread(ws.recv).startswith("0{")
        with pytest.raises(InvalidStatus) as refused:
            in_thread(lambda: websockets.sync.client.connect(server.url, legacy=True))
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert json.loads(response.body)["error"]["code"] == "busy"
        assert gate.refused == 1
        assert server.eio_sockets() == [server.eio_sockets()[0]]  # engine.io saw one
    finally:
        in_thread(ws.close)


def test_requests_of_open_sessions_are_never_refused(gated):
    server, gate = gated
    gate.tokens = 0
    url = server.url.replace("ws://", "http://").replace("websocket", "polling&sid=nope")
    import urllib.error
    import urllib.request

    def get():
        try:
            return urllib.request.urlopen(url, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert in_thread(get) == 400  # engine.io's own answer to an unknown sid
    assert gate.refused == 0


def test_the_stock_client_retries_a_refused_connect_and_gets_in(gated):
    server, gate = gated
    gate.tokens = 0  # the next token comes in a second
    client = socketio.Client(reconnection_delay=0.1, reconnection_delay_max=0.2)
    connected = threading.Event()
    client.on("connect", connected.set)
    url = f"http://127.0.0.1:{server.port}"
    try:
        in_thread(
            lambda: client.connect(url, transports=["websocket"], retry=True, wait_timeout=5),
            timeout=15,
        )
        wait_for(connected.is_set, timeout=10)
        assert gate.refused >= 1  # refused at least once, then admitted
        assert len(server.eio_sockets()) == 1
    finally:
        in_thread(client.disconnect)
