"""Gunicorn's worker class for the web role with the fast transport:
gevent-websocket's, with less kept per connection (``WEB_FAST_TRANSPORT=0``
uses gevent-websocket's own worker instead; see web/gunicorn.conf.py).

- A 1 KB read buffer per connection instead of 8 KB: Socket.IO clients send a few
  hundred bytes at a time, and a larger read goes around the buffer anyway. A
  connection's handler lives as long as its long-polling session or upgraded
  WebSocket (one that opens directly is handed off, see ``fastws.transport``).
- No record of where each greenlet was spawned (a stack and a dict, ~2 KB per
  socket in tracemalloc), which only debugging tools read; a greenlet now starts
  for each read and each burst of writes.
"""

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

from . import fastws

READ_BUFFER_BYTES = 1024

gevent.config.track_greenlet_tree = False


class Handler(WebSocketHandler):
    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        if rfile is None and fastws.usable():
            from .fastws import seams

            seams.small_read_buffer(self, sock, READ_BUFFER_BYTES)


class Worker(GeventWebSocketWorker):
    wsgi_handler = Handler
