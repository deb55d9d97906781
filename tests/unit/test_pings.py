"""engine.io pings on a timer: same schedule and rules, no greenlet while waiting."""
import gc
import time

import gevent
import greenlet
from engineio import packet as eio_packet

from taskbeam.web import pings


class FakeSocket:
    def __init__(self):
        self.last_ping, self.closing, self.closed, self.sent = time.time(), False, False, []

    def send(self, pkt):
        self.sent.append(pkt.packet_type)

    def schedule_ping(self):
        raise AssertionError("engine.io's own scheduler must not run")


class FakeEio:
    ping_interval = 0.05

    def __init__(self):
        self.handlers, self.sockets, self.connected = {}, {}, []
        self.on("connect", lambda sid, environ: self.connected.append(sid) or True)

    def on(self, event, handler):
        self.handlers[event] = handler


def connect(eio, sid="a"):
    sock = eio.sockets[sid] = FakeSocket()
    assert eio.handlers["connect"](sid, {}) is True
    return sock


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.005)


def greenlets():
    return sum(isinstance(o, greenlet.greenlet) and not o.dead for o in gc.get_objects())


def test_connect_still_reaches_the_original_handler_and_the_socket_gets_a_timer_ping():
    eio = FakeEio()
    pings.install(eio)
    sock = connect(eio)
    assert eio.connected == ["a"]
    assert sock.schedule_ping.__self__.sock is sock


def test_a_ping_goes_out_after_the_interval_without_a_greenlet_waiting_for_it():
    eio = FakeEio()
    pings.install(eio)
    sock = connect(eio)
    gevent.get_hub()  # created on first use
    before = greenlets()
    started = time.monotonic()
    sock.schedule_ping()
    assert sock.last_ping is None and greenlets() == before
    wait_for(lambda: sock.sent)
    assert sock.sent == [eio_packet.PING]
    assert time.monotonic() - started >= eio.ping_interval * 0.9
    assert sock.last_ping is not None  # engine.io measures the ping timeout from here


def test_only_one_ping_cycle_at_a_time():
    eio = FakeEio()
    pings.install(eio)
    sock = connect(eio)
    sock.schedule_ping()
    sock.schedule_ping()  # no PONG yet: ignored, as in engine.io
    wait_for(lambda: sock.sent)
    gevent.sleep(eio.ping_interval * 3)  # room for a second ping that must not come
    assert sock.sent == [eio_packet.PING]


def test_a_closed_socket_is_not_pinged():
    eio = FakeEio()
    pings.install(eio)
    sock = connect(eio)
    sock.schedule_ping()
    sock.closed = True
    timer = sock.schedule_ping.__self__.timer
    wait_for(lambda: not timer.active)
    gevent.sleep(0.01)  # the spawned sender runs at the next switch
    assert sock.sent == []
