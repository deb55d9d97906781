"""engine.io pings on a timer, against real python-engineio Server and Socket
objects: same schedule and rules, no greenlet while waiting."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import engineio.socket
import gevent
import pytest
import socketio
from conftest import live_greenlets
from engineio import packet as eio_packet

from taskbeam.web import fastws
from taskbeam.web.fastws import pings

INTERVAL_S = 0.1
ROOT = Path(__file__).resolve().parents[2]


def server():
    sio = socketio.Server(async_mode="gevent", ping_interval=INTERVAL_S)
    fastws.install(sio)
    return sio.eio


def connect(eio, sid="a"):
    sock = eio.sockets[sid] = engineio.socket.Socket(eio, sid)
    eio.handlers["connect"](sid, {"REMOTE_ADDR": "127.0.0.1"})
    return sock


def queued_types(sock):
    return [pkt.packet_type for pkt in (sock.queue.items or ())]


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.005)


def test_connect_gives_the_socket_a_timer_ping_and_a_bounded_queue():
    eio = server()
    sock = connect(eio)
    assert isinstance(sock.schedule_ping.__self__, pings.TimerPing)
    assert sock.queue.on_overflow is not None


def test_a_ping_goes_out_after_the_interval_without_a_greenlet_waiting_for_it():
    eio = server()
    sock = connect(eio)
    gevent.get_hub()
    idle = live_greenlets()
    started = time.monotonic()
    sock.schedule_ping()  # what engine.io calls after the handshake
    assert not live_greenlets() - idle
    wait_for(lambda: eio_packet.PING in queued_types(sock))
    assert INTERVAL_S * 0.8 <= time.monotonic() - started < INTERVAL_S + 0.5
    assert sock.last_ping  # engine.io's check_ping_timeout now runs from it


def test_only_one_ping_cycle_at_a_time_and_a_pong_starts_the_next():
    eio = server()
    sock = connect(eio)
    sock.schedule_ping()
    sock.schedule_ping()  # a second PONG before the ping went out: ignored
    wait_for(lambda: eio_packet.PING in queued_types(sock))
    gevent.sleep(INTERVAL_S * 1.5)
    assert queued_types(sock).count(eio_packet.PING) == 1
    sock.receive(eio_packet.Packet(eio_packet.PONG))  # real engine.io: schedules the next
    wait_for(lambda: queued_types(sock).count(eio_packet.PING) == 2)


def test_a_closed_socket_is_not_pinged():
    eio = server()
    sock = connect(eio)
    sock.schedule_ping()
    sock.closed = True
    gevent.sleep(INTERVAL_S * 2)
    assert eio_packet.PING not in queued_types(sock)


def test_pings_are_due_on_a_grid_so_that_many_sockets_share_a_wake_up(monkeypatch):
    eio = server()
    grid = INTERVAL_S / 10
    delays = []

    class Timer:
        def __init__(self, delay):
            delays.append(delay)

        def start(self, *args, **kwargs):
            pass

    loop = SimpleNamespace(timer=Timer)
    hub = SimpleNamespace(loop=loop)
    monkeypatch.setattr(pings, "gevent", SimpleNamespace(get_hub=lambda: hub, spawn=gevent.spawn))
    moments = (100.001, 100.003, 100.0071, 100.0099)  # schedule_ping at four moments
    for now in moments:
        monkeypatch.setattr(pings.time, "monotonic", lambda now=now: now)
        connect(eio, sid=f"s{now}").schedule_ping()
    assert all(INTERVAL_S - 1e-9 <= delay < INTERVAL_S + grid for delay in delays)
    assert len({round(now + delay, 6) for now, delay in zip(moments, delays)}) == 1  # together


HANDSHAKE = """
from gevent import monkey
monkey.patch_all()  # as Gunicorn's gevent worker does
from taskbeam import config
from taskbeam.web import create_app
answer = create_app(config.load()).test_client().get("/socket.io/?EIO=4&transport=polling")
print(answer.get_data(as_text=True))
"""


@pytest.mark.parametrize("fast", ["1", "0"])
def test_the_handshake_tells_clients_the_heartbeat_settings(fast, tmp_path):
    # The client closes and reconnects after pingInterval + pingTimeout of silence:
    # what it learns here is how long it waits on a web node lost without a FIN.
    env = dict(
        os.environ,
        REDIS_URL="redis://127.0.0.1:1/0",  # the handshake does not touch Redis
        SECRET_KEY=os.urandom(32).hex(),
        EXPORT_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT),
        WEB_FAST_TRANSPORT=fast,
        WEB_PING_INTERVAL_S="7",
        WEB_PING_TIMEOUT_S="3",
    )
    done = subprocess.run(
        [sys.executable, "-c", HANDSHAKE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    opened = json.loads(done.stdout.strip().splitlines()[-1][1:])  # after engine.io's "0"
    assert (opened["pingInterval"], opened["pingTimeout"]) == (7000, 3000)
