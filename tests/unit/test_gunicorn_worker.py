"""The web role's Gunicorn workers: a small read buffer that still reads whole requests;
connections closed on SIGTERM."""

import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gevent
import pytest
from gevent import socket

from taskbeam.gunicorn_worker import (
    CLOSE_AGAIN_S,
    READ_BUFFER_BYTES,
    Handler,
    StockWorker,
    Worker,
)


def test_a_connection_reads_through_a_small_buffer():
    server_side, client_side = socket.socketpair()
    try:
        default = server_side.makefile("rb", -1)
        handler = Handler(server_side, ("127.0.0.1", 1), server=None)
        assert sys.getsizeof(handler.rfile) < sys.getsizeof(default) - 6 * 1024
        default.close()

        long_header = b"Cookie: " + b"c" * (3 * READ_BUFFER_BYTES) + b"\r\n"
        client_side.sendall(b"GET / HTTP/1.1\r\n" + long_header + b"\r\n" + b"x" * 5000)
        assert handler.rfile.readline() == b"GET / HTTP/1.1\r\n"
        assert handler.rfile.readline() == long_header
        assert handler.rfile.readline() == b"\r\n"
        assert handler.rfile.read(5000) == b"x" * 5000
    finally:
        server_side.close()
        client_side.close()


def test_greenlets_do_not_record_where_they_were_spawned():
    greenlet = gevent.spawn(lambda: None)
    greenlet.join()
    assert greenlet.spawning_stack is None and greenlet.spawn_tree_locals is None


class CountingQueueWatch:
    def __init__(self):
        self.closed = 0

    def close_connections(self):
        self.closed += 1


def worker_of(cls, app=None):
    """A gunicorn worker object as its signal handler sees it (not started)."""
    worker = object.__new__(cls)
    worker.alive = True
    if app is not None:
        worker.wsgi = app
    return worker


@pytest.mark.parametrize("cls", [Worker, StockWorker])
def test_sigterm_closes_the_connections_until_the_process_ends(cls):
    watch = CountingQueueWatch()
    app = SimpleNamespace(extensions={"taskbeam": SimpleNamespace(queue_watch=watch)})
    worker = worker_of(cls, app)
    worker.handle_exit(signal.SIGTERM, None)
    worker.handle_exit(signal.SIGTERM, None)  # a second SIGTERM starts nothing more
    try:
        assert worker.alive is False
        gevent.sleep(0)
        assert watch.closed == 1  # at once
        started = time.monotonic()
        while watch.closed < 2:  # and again: a client that reconnected meanwhile
            assert time.monotonic() - started < CLOSE_AGAIN_S + 2, "not closed again"
            gevent.sleep(0.01)
        assert time.monotonic() - started >= CLOSE_AGAIN_S * 0.9
    finally:
        worker.closing.kill()


def test_sigterm_before_the_app_is_loaded_only_stops_the_worker():
    worker = worker_of(StockWorker)
    worker.handle_exit(signal.SIGTERM, None)
    assert worker.alive is False and worker.closing is None


def test_loading_the_worker_class_imports_nothing_gevent_must_patch_first():
    """Gunicorn imports the worker class (and so the taskbeam package) before the worker
    monkey-patches: the package must not import redis, ssl or Flask on its own."""
    import subprocess
    import sys

    code = (
        "import warnings, taskbeam.gunicorn_worker, taskbeam\n"
        "from gevent import monkey\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    monkey.patch_all()\n"
        "assert not [w for w in seen if 'Monkey-patching' in str(w.message)], seen\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def gunicorn_settings(**env):
    """web/gunicorn.conf.py's module globals, read with ``env`` set."""
    conf = Path(__file__).resolve().parents[2] / "web" / "gunicorn.conf.py"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return runpy.run_path(str(conf))


def test_web_listens_on_loopback_and_the_named_interface_only():
    assert gunicorn_settings(WEB_LISTEN_INTERFACE="")["bind"] == "0.0.0.0:8000"
    assert gunicorn_settings(WEB_LISTEN_INTERFACE="lo")["bind"] == [
        "127.0.0.1:8000",
        "127.0.0.1:8000",
    ]
    with pytest.raises(SystemExit, match="WEB_LISTEN_INTERFACE=nosuch0: no such interface"):
        gunicorn_settings(WEB_LISTEN_INTERFACE="nosuch0")


def test_web_may_name_its_interface_by_a_subnet_of_its_address():
    # Swarm names every overlay interface ethN (deploy/swarm/stack.yml fixes the
    # front network's subnet instead): the interface whose address is in it.
    assert gunicorn_settings(WEB_LISTEN_INTERFACE="127.0.0.0/8")["bind"] == [
        "127.0.0.1:8000",
        "127.0.0.1:8000",
    ]
    with pytest.raises(SystemExit, match="WEB_LISTEN_INTERFACE=198.51.100.0/24: no interface"):
        gunicorn_settings(WEB_LISTEN_INTERFACE="198.51.100.0/24")


def test_a_worker_freezes_its_start_up_and_makes_full_collections_rare():
    conf = Path(__file__).resolve().parents[2] / "web" / "gunicorn.conf.py"
    code = (
        "import gc, runpy, sys\n"
        "runpy.run_path(sys.argv[1])['post_worker_init'](None)\n"
        "print(gc.get_threshold()[2], gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(conf)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["100", "True"], done.stderr
