"""The Flask-SocketIO extension, made without an app and bound by ``create_app``
(``init_app``): the request and socket handlers emit through it."""

from flask_socketio import SocketIO

socketio = SocketIO()
