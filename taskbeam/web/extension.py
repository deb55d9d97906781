"""The Flask extension: Taskbeam's API and live progress in an app of your own.

::

    socketio = SocketIO()
    taskbeam = Taskbeam()

    def create_app():
        app = Flask(__name__)
        taskbeam.init_app(app, socketio, owner_of=lambda request: current_user.get_id())
        return app

``init_app`` registers ``/api/tasks``, ``/api/kinds`` and the rest of docs/api.md in
``app``, and the Socket.IO handlers (``connect``, ``subscribe``, ``unsubscribe``) in
``socketio``, which it binds (do not call ``socketio.init_app`` yourself) to the
message-queue listener that delivers the workers' events. Your own login decides the
owner: ``owner_of(request)`` returns the user's id, or None for 401 ``unauthenticated``.
Run the app as ``web`` runs (Gunicorn with ``web/gunicorn.conf.py``); settings come
from the environment as for ``web`` (docs/configuration.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Request
from flask_socketio import SocketIO

from .. import config


class Taskbeam:
    """:param app: bind now (else call :meth:`init_app` from your app factory).
    :param socketio: your ``SocketIO``, not yet bound (a new one if None).
    :param owner_of: ``owner_of(request) -> str | None``, your login's user id.
    :param settings: a :class:`taskbeam.config.Settings` (default: the environment).
    """

    def __init__(
        self,
        app: Flask | None = None,
        socketio: SocketIO | None = None,
        *,
        owner_of: Callable[[Request], Any] | None = None,
        settings: config.Settings | None = None,
    ) -> None:
        self.socketio, self.owner_of, self.settings = socketio, owner_of, settings
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        socketio: SocketIO | None = None,
        *,
        owner_of: Callable[[Request], Any] | None = None,
    ) -> SocketIO:
        """Register Taskbeam in ``app``; the ``SocketIO`` it bound (run the app with it)."""
        from . import install

        sio = socketio or self.socketio or SocketIO()
        settings = self.settings or config.load_or_exit()
        install(app, sio, settings, owner_of or self.owner_of)
        self.socketio = sio
        return sio
