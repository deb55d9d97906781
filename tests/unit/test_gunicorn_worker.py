"""The web role's connection handler: a small read buffer that still reads whole requests."""

import sys

import gevent
from gevent import socket

from taskbeam.web.gunicorn_worker import READ_BUFFER_BYTES, Handler


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
