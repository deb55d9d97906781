"""Gunicorn's worker classes for the web role: gevent-websocket's, closing the
clients' connections on shutdown (:class:`StockWorker` for ``WEB_FAST_TRANSPORT=0``,
:class:`Worker` otherwise; see web/gunicorn.conf.py). Gunicorn's master imports this
module before the worker monkey-patches, so it imports the app lazily.

On SIGTERM, gunicorn stops accepting within a second, then waits up to
``graceful_timeout`` for every handler to end. An open WebSocket is a handler (with
stock gevent-websocket; a long-poll with either), so a restart would wait the whole
10 s while refusing new requests, and then cut the clients anyway. Instead the worker
closes every connection as a dropped network would (the clients reconnect, to the
next process or another replica, and resume by seq) and exits once the HTTP requests
in flight are done. It closes them again every half second until then, so a client
that reconnected before gunicorn stopped accepting is not kept either.

Less kept per connection:

- With the fast transport, :class:`Worker`'s handler reads through a 1 KB buffer
  instead of 8 KB: Socket.IO clients send a few hundred bytes at a time, and a
  larger read goes around the buffer anyway. A connection's handler lives as long
  as its long-polling session or upgraded WebSocket (one that opens directly is
  handed off, see ``fastws.transport``).
- With the fast transport, :class:`Worker`'s handler refuses new Socket.IO
  connections past ``WEB_CONNECTS_PER_S`` with a quick 503 (``fastws.admission``),
  and runs the app for a WebSocket-only open (``EIO=4&transport=websocket``) without
  gevent-websocket's handshake: the fast transport makes its own
  (``fastws.transport.open_directly``).
- In either worker, no record of where each greenlet was spawned (a stack and a
  dict, ~2 KB per socket in tracemalloc), which only debugging tools read; with the
  fast transport a greenlet starts for each read and each burst of writes.
"""

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

READ_BUFFER_BYTES = 1024

gevent.config.track_greenlet_tree = False


class Handler(WebSocketHandler):
    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        from .web import fastws  # not at import time (see the module's docstring)

        # This class runs with WEB_FAST_TRANSPORT on only (web/gunicorn.conf.py).
        if rfile is None and fastws.libraries_supported():
            from .web.fastws import seams

            seams.small_read_buffer(self, sock, READ_BUFFER_BYTES)

    def run_application(self):
        # Past WEB_CONNECTS_PER_S a new Socket.IO connection is refused here, before
        # gevent-websocket's handshake (fastws.admission); pywsgi's own body otherwise.
        from .web.fastws import admission, seams, transport

        refuse = admission.refusal(self.environ)
        if refuse is None:
            if not transport.opens_websocket(self.environ):
                return super().run_application()
            # A WebSocket-only open: the fast transport makes the handshake itself
            # (fastws.transport.open_directly), so the app runs without gevent-websocket's.
            self.environ[transport.HANDLER] = self
            try:
                self.result = self.application(self.environ, self.start_response)
            finally:
                self.environ.pop(transport.HANDLER, None)
            if not seams.connection_taken(self):  # an error answer (a bad host, origin, key)
                seams.close_after_answer(self)  # the client asked for no further request
                self.process_result()
            return
        try:
            self.result = refuse(self.environ, self.start_response)
            self.process_result()
        finally:
            self.result = None


CLOSE_AGAIN_S = 0.5


class ClosesConnectionsOnExit:
    closing = None

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        # No app yet when SIGTERM comes while it loads.
        services = getattr(getattr(self, "wsgi", None), "extensions", {}).get("taskbeam")
        if services is not None and self.closing is None:
            self.closing = gevent.spawn(self._close_until_exit, services.queue_watch)

    @staticmethod
    def _close_until_exit(queue_watch):
        while True:  # the process's exit ends it
            queue_watch.close_connections()
            gevent.sleep(CLOSE_AGAIN_S)


class StockWorker(ClosesConnectionsOnExit, GeventWebSocketWorker):
    pass


class Worker(ClosesConnectionsOnExit, GeventWebSocketWorker):
    wsgi_handler = Handler
