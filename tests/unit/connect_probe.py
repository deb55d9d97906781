"""The real web app for tests/unit/test_socket_connect.py, under Gunicorn, plus a
``/probe`` route: the owner of the caller's session, every connected socket's
owner and rooms, and which handshakes pushed a Flask request context."""

from flask import jsonify, session

from taskbeam import config
from taskbeam.web import create_app, socketio


def create():
    app = create_app(config.load())
    contexts = []
    request_context = app.request_context

    def counted(environ):
        if environ.get("PATH_INFO", "").startswith("/socket.io"):
            contexts.append(environ["PATH_INFO"])
        return request_context(environ)

    app.request_context = counted

    @app.get("/probe")
    def probe():
        server = socketio.server
        sockets = {}
        for sid, _eio_sid in server.manager.get_participants("/", None):
            sockets[sid] = {
                "owner": server.get_session(sid).get("owner"),
                "rooms": sorted(server.rooms(sid)),
                "environ": sorted(k for k in server.get_environ(sid) if k.startswith("taskbeam.")),
            }
        return jsonify(
            owner=session.get("owner"),
            sockets=sockets,
            sessions=len(server.eio.sockets),
            contexts=len(contexts),
        )

    return app
