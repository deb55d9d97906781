"""What a process that runs or starts tasks talks to: the worker, and
:func:`taskbeam.submit` in a team's own processes (views, CLI commands, beat)."""

from dataclasses import dataclass

from flask_socketio import SocketIO
from socketio import RedisManager

from . import broker, config, sentinel
from .emitter import Emitter
from .store import DEAD_PEER_OPTIONS, TaskStore, redis_client, redis_tls


@dataclass
class Runtime:
    """What a worker process talks to: built once, passed to what needs it."""

    settings: config.Settings
    celery: object
    store: TaskStore
    emitter: Emitter


def make_runtime(settings, redis_conn=None, socketio=None):
    """The worker's Celery app, store and emitter; nothing connects until used.

    Flask-SocketIO's external emitter (a ``SocketIO(message_queue=...)`` with no
    app) makes the messages, so the wire format is the stock one.
    """
    store = TaskStore(redis_conn or redis_client(settings), settings)
    url, redis_options = sentinel.stock_form(
        settings.redis_url,
        dict(DEAD_PEER_OPTIONS, socket_timeout=5, socket_connect_timeout=3, **redis_tls(settings)),
    )
    # python-socketio's Redis manager, as Flask-SocketIO builds it for a redis:// URL;
    # named here because Flask-SocketIO would take a redis+sentinel:// URL for kombu's.
    socketio = socketio or SocketIO(
        message_queue=url,  # with no app, this makes it an emitter
        client_manager=RedisManager(
            url, channel=settings.socketio_channel, write_only=True, redis_options=redis_options
        ),
    )
    # The store publishes each event to its room's channel: from inside the Lua append
    # (one round trip), or in Sentinel mode after the append's WAIT (taskbeam/emitter.py).
    emitter = Emitter(store, socketio, store_publishes=True)
    return Runtime(settings, broker.make_celery(settings), store, emitter)
