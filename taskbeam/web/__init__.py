"""The web process: REST API and Socket.IO, behind Nginx, under Gunicorn+gevent.

Gunicorn runs ``taskbeam.web:create_app()`` in one gevent-websocket worker per
container; more browsers means more ``web`` containers, not more workers.
"""

import logging
import secrets
from dataclasses import dataclass

from flask import Flask, session
from flask_socketio import SocketIO

import redis

from .. import config, observability, registry, tracing
from ..broker import make_celery
from ..emitter import Emitter
from ..store import TaskStore, redis_client, redis_tls
from . import fastws, front, identity
from .fastws import admission
from .front import origin_allowed
from .metrics import Metrics
from .mq_listener import QueueWatch, make_manager

MAX_BODY_BYTES = 1024 * 1024
REDIS_POOL_SIZE = 50

# The project's own app's Socket.IO (create_app binds it; the extension takes an app's own).
socketio = SocketIO()


@dataclass
class Services:
    """What the request handlers use, built once per process."""

    settings: config.Settings
    redis: redis.Redis
    store: TaskStore
    emitter: Emitter
    celery: object
    queue_watch: QueueWatch
    metrics: Metrics
    identity: identity.Identity
    socketio: SocketIO


def create_app(settings=None, owner_of=None):
    """The Flask app with Socket.IO bound; ``settings`` default to the environment.

    ``owner_of(request) -> str | None``: an app's own login names the task owner
    (docs/identity.md); None means not signed in (401 ``unauthenticated``).
    """
    settings = settings or config.load_or_exit()
    if settings.log_format == "json":
        observability.configure("json")
    else:
        logging.basicConfig(level=logging.INFO, format=observability.TEXT_FORMAT)
        observability.drop_health_checks()  # the container's /readyz every 5 s

    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        # Behind TLS the __Host- prefix: browsers keep it only if Secure, for this host
        # and path / (a sibling subdomain or a plain-HTTP page cannot plant one).
        SESSION_COOKIE_NAME=("__Host-" if settings.session_cookie_secure else "")
        + "taskbeam_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Behind TLS (SESSION_COOKIE_SECURE=1) the cookie never travels over plain HTTP.
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=30 * 86_400,
    )
    # Nginx is the one proxy in front: trust its X-Forwarded-For/-Proto only, and
    # the X-Request-ID it sets on every request.
    app.wsgi_app = front.trust_nginx(app.wsgi_app)
    app.config["TASKBEAM_TRUST_REQUEST_ID"] = True
    install(app, socketio, settings, owner_of)
    # Outermost, so Socket.IO's handshake is checked too.
    app.wsgi_app = front.HostCheck(app.wsgi_app, settings)
    from . import errors

    errors.register_error_handlers(app)  # every answer of this app is the contract's JSON
    tracing.start("taskbeam-web", app)  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
    return app


def install(app, sio, settings, owner_of=None):
    """Taskbeam's API and Socket.IO handlers in ``app`` and ``sio`` (a Flask-SocketIO
    ``SocketIO`` not yet bound: this binds it, with the message-queue listener that
    delivers task events). Used by :func:`create_app` and the extension."""
    registry.load_or_exit(settings.jobs_modules)  # the team's own kinds (JOBS_MODULES)
    # Bounded: a burst of requests or subscribes waits for one of these connections
    # instead of opening one per greenlet (and timing out under the load it makes).
    client = redis_client(settings, max_connections=REDIS_POOL_SIZE)
    metrics = Metrics()
    metrics.count_responses(app)
    # The fast transport, or stock python-socketio (WEB_FAST_TRANSPORT=0; fastws).
    fast = fastws.in_use(settings)
    manager = make_manager(
        settings.redis_url, settings.socketio_channel, metrics, redis_tls(settings), fast=fast
    )

    def socket_origin_allowed(origin, environ):
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        forwarded = environ.get("HTTP_X_FORWARDED_PROTO")
        if forwarded:
            own = f"{forwarded.split(',')[0].strip()}://{environ.get('HTTP_HOST', '')}"
        return origin_allowed(origin, settings, own)

    sio.init_app(
        app,
        client_manager=manager,
        async_mode="gevent",
        cors_allowed_origins=socket_origin_allowed,
        # WEB_PING_INTERVAL_S + WEB_PING_TIMEOUT_S: how long a client waits on a
        # silent web (a node lost without a FIN) before it reconnects.
        ping_interval=settings.web_ping_interval_s,
        ping_timeout=settings.web_ping_timeout_s,
        # Same bound as HTTP bodies: larger messages close the connection.
        max_http_buffer_size=MAX_BODY_BYTES,
    )
    if fast:
        fastws.install(sio.server)
        admission.configure(settings.web_connects_per_s)
    store = TaskStore(client, settings)
    watch = QueueWatch(sio, manager, client, store.keys.main_only)
    services = app.extensions["taskbeam"] = Services(
        settings=settings,
        redis=client,
        store=store,
        emitter=Emitter(store, sio),
        celery=make_celery(settings),
        queue_watch=watch,
        metrics=metrics,
        identity=identity.Identity(settings.auth, owner_of),
        socketio=sio,
    )

    front.request_ids(app)

    @app.before_request
    def ensure_owner():
        # The signed session cookie is the owner of every task it creates
        # (AUTH_MODE=session; the other modes name the owner from credentials).
        if services.identity.mode == "session" and "owner" not in session:
            session["owner"] = secrets.token_urlsafe(16)
            session.permanent = True

    from . import api, sockets

    sockets.register(sio, app, services)
    sockets.install(sio.server, services)
    app.register_blueprint(api.bp)
    if services.identity.dev_login:
        logging.getLogger(__name__).warning(
            "AUTH_DEV_LOGIN=1: POST /api/dev/token mints a token for any name (demos only)"
        )
        app.register_blueprint(api.dev_bp)
    watch.start()
    return services
