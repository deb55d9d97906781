"""Gunicorn's worker class for the web role: gevent-websocket's, with a smaller
read buffer per connection.

A connection's buffered reader lives as long as its WebSocket. At the default
8 KB it was the largest single allocation per idle socket (tracemalloc), yet
Socket.IO clients send a few hundred bytes at a time; a larger read goes around
the buffer anyway.
"""
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

READ_BUFFER_BYTES = 1024


class Handler(WebSocketHandler):
    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        if rfile is None:
            self.rfile.close()  # the default 8 KB one; the socket stays open
            self.rfile = sock.makefile("rb", READ_BUFFER_BYTES)


class Worker(GeventWebSocketWorker):
    wsgi_handler = Handler
