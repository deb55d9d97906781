"""Gunicorn's worker class for the web role: gevent-websocket's, with less kept
per connection.

A connection's handler lives as long as its WebSocket, so what it keeps is paid
by every idle browser (tracemalloc, per idle socket):
- the buffered reader: 8 KB by default, yet Socket.IO clients send a few hundred
  bytes at a time, and a larger read goes around the buffer anyway;
- the parsed request headers (~2 KB of ``email`` objects), which the environ
  already holds;
- gevent's record of where each greenlet was spawned (its stack and a dict,
  ~2 KB), which only debugging tools read.
"""
import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

READ_BUFFER_BYTES = 1024

gevent.config.track_greenlet_tree = False


class UpgradeHeaders(dict):
    """The request headers gevent still reads once a WebSocket's environ is built."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)


class Handler(WebSocketHandler):
    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        if rfile is None:
            self.rfile.close()  # the default 8 KB one; the socket stays open
            self.rfile = sock.makefile("rb", READ_BUFFER_BYTES)

    def get_environ(self):
        environ = super().get_environ()
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            self.headers = UpgradeHeaders(
                connection=environ.get("HTTP_CONNECTION", ""),
                upgrade=environ["HTTP_UPGRADE"])
        return environ


class Worker(GeventWebSocketWorker):
    wsgi_handler = Handler
