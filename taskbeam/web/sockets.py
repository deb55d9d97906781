"""Socket.IO handlers: ``subscribe`` and ``unsubscribe`` with acks (docs/api.md).

``connect`` reads the owner from the handshake (the session cookie, a token,
Nginx's identity header) and keeps it in the connection's python-socketio
session. ``connect``, ``disconnect``, ``subscribe`` and ``unsubscribe`` are
python-socketio handlers (:func:`register`, :func:`install`): Flask-SocketIO
would push a Flask request context for each, opening the session cookie and
matching the URL again, about a third of a connect's CPU. Only an app's own
``owner_of(request)`` hook, which may read anything of Flask's request, keeps
Flask-SocketIO's ``connect``.
"""

import collections
import functools
import json
import logging
import secrets
import time

import gevent
from flask import current_app, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_socketio import ConnectionRefusedError
from itsdangerous import BadSignature
from redis.exceptions import RedisError
from werkzeug.http import parse_cookie

from .. import protocol
from ..protocol import MAX_EVENTS_PAGE, MAX_SEQ_DIGITS
from . import identity

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 200
# As GET /events: `after` bounded (a stream id holds 64 bits), a longer backlog in
# pages of MAX_EVENTS_PAGE (the ack says `more`).
MAX_AFTER = 10**MAX_SEQ_DIGITS
# sid -> the timer that ends the socket when its token expires (AUTH_MODE=jwt).
_expiry_timers: dict[str, gevent.Greenlet] = {}


def _services():
    return current_app.extensions["taskbeam"]


def _error(code, message):
    return {"ok": False, "error": {"code": code, "message": message}}


def _task_id(data):
    """``(task_id, None)``, or ``(None, the ack's error)``: a string that cannot be a
    task id is ``not_found``, as REST's 404 for it; anything else ``invalid_params``."""
    task_id = data.get("task_id") if isinstance(data, dict) else None
    if not isinstance(task_id, str):
        return None, _error("invalid_params", "task_id: must be a task id")
    if not protocol.valid_task_id(task_id):
        return None, _error("not_found", "No such task.")
    return task_id, None


def register(sio, app, services):
    """Register the connect, disconnect, catch-all and error handlers on ``sio``: this
    project's ``SocketIO`` or an app's own (the extension), bound to ``app``."""
    if services.identity.mode == "app":  # owner_of(request) may need Flask's request context
        sio.on("connect")(functools.partial(on_connect, sio))
        sio.on("disconnect")(on_disconnect)
    else:
        server = sio.server
        connect = functools.partial(on_connect_direct, server, services, SessionCookie(app))
        server.on("connect", connect)
        server.on("disconnect", on_disconnect_direct)
    sio.on("*")(on_unknown_event)
    sio.on_error_default(on_error)


class SessionCookie:
    """A handshake's signed session cookie, read as Flask's ``SecureCookieSessionInterface
    .open_session`` reads it but without a request context, its serializer made once.
    An app's other session interface (e.g. server-side sessions) is asked itself."""

    def __init__(self, app):
        self.app = app
        interface = app.session_interface
        self.serializer = None
        if type(interface) is SecureCookieSessionInterface:
            self.serializer = interface.get_signing_serializer(app)  # None without a key
            self.name = interface.get_cookie_name(app)
            self.max_age = int(app.permanent_session_lifetime.total_seconds())

    def read(self, environ) -> dict:
        if self.serializer is None:
            app = self.app
            opened = app.session_interface.open_session(app, app.request_class(environ))
            return opened if opened is not None else {}
        value = parse_cookie(environ).get(self.name)
        if not value:
            return {}
        try:
            return self.serializer.loads(value, max_age=self.max_age)
        except BadSignature:  # as Flask: a new, empty session
            return {}


def on_connect_direct(server, services, cookie, sid, environ, auth=None):
    """python-socketio's ``connect``: no Flask request context (see :class:`SessionCookie`)."""
    who = services.identity
    session_data = cookie.read(environ) if who.mode == "session" else {}
    accept(server, services, sid, cookie.app.request_class(environ), session_data, auth)


def on_connect(sio, auth=None):
    """Flask-SocketIO's ``connect``, for an app's ``owner_of(request)`` hook."""
    accept(sio.server, _services(), request.sid, request, session, auth)


def accept(server, services, sid, request, session, auth):
    """Refuse a connect (ConnectionRefusedError), or keep its owner and join its room."""
    # Live events could not reach this socket while the listener is deaf; refuse,
    # and the client retries until this process (or another replica) can serve it.
    if not services.queue_watch.healthy:
        raise ConnectionRefusedError("unavailable: the message queue is not reachable")
    # session mode: the handshake carried the cookie; jwt: the CONNECT payload's token;
    # header: Nginx's identity header (identity.py).
    try:
        owner, expires_at = services.identity.owner(request, session, auth)
    except identity.Unauthenticated as exc:
        raise ConnectionRefusedError(
            f"{exc.code}: {exc.message}", {"code": exc.code, "message": exc.message}
        ) from None
    server.save_session(sid, {"owner": owner, "subscriptions": set()})
    # Tasks appear wherever their owner looks: `task_created` goes to this room.
    server.enter_room(sid, identity.owner_room(owner))
    if expires_at is not None:
        delay = max(0.0, expires_at - time.time())
        _expiry_timers[sid] = gevent.spawn_later(delay, _expire, server, sid)


def _expire(server, sid):
    """The token ran out: tell the client (it reconnects with a fresh one), then close."""
    _expiry_timers.pop(sid, None)
    message = "The token has expired; reconnect with a fresh one."
    # Straight to this process's socket, ahead of the disconnect (not via Redis).
    server.emit("error", {"code": "token_expired", "message": message}, to=sid, ignore_queue=True)
    server.disconnect(sid)


def on_disconnect(reason=None):
    on_disconnect_direct(request.sid)


def on_disconnect_direct(sid, reason=None):
    timer = _expiry_timers.pop(sid, None)
    if timer is not None:
        timer.kill(block=False)


def install(server, services):
    """Register ``subscribe`` and ``unsubscribe`` on python-socketio's ``server``."""
    server.on("subscribe", functools.partial(_guarded, on_subscribe, server, services))
    server.on("unsubscribe", functools.partial(_guarded, on_unsubscribe, server, services))


# Connections whose end a handler already reported, so that each logs one line (a slow
# client's queued subscribes run after its session is gone); the newest few only.
_gone_reported: collections.OrderedDict[str, None] = collections.OrderedDict()
MAX_GONE_REPORTED = 1024


def _report_gone(sid):
    if sid in _gone_reported:
        return
    _gone_reported[sid] = None
    if len(_gone_reported) > MAX_GONE_REPORTED:
        _gone_reported.popitem(last=False)
    log.info("socket %s: gone; its queued messages are dropped", sid)


def _guarded(handler, server, services, sid, data=None):
    """The handler's ack, or the contract's error for what went wrong in it."""
    try:
        if not server.manager.is_connected(sid, "/"):
            _report_gone(sid)
            return None  # no one to answer
        return handler(server, services, sid, data)
    except RedisError as exc:
        log.warning("socket handler: Redis error: %s", exc)
        return _error("unavailable", "Storage is unavailable; subscribe again shortly.")
    except Exception:
        if not server.manager.is_connected(sid, "/"):
            _report_gone(sid)  # it went while the handler ran
            return None
        log.exception("socket handler failed for %s", sid)
        return _error("internal_error", "Something went wrong on our side.")


class _Budget:
    """A connection's subscribes and replay bytes: token buckets that hold a second's
    worth (SUBSCRIBE_RATE_PER_S, SUBSCRIBE_REPLAY_BYTES_PER_S). One subscribe may
    replay a whole page past the bytes; the next ones wait until that is paid back."""

    __slots__ = ("subscribes", "replay", "at")

    def __init__(self, settings, now):
        self.subscribes = float(settings.subscribe_rate_per_s)
        self.replay = float(settings.subscribe_replay_bytes_per_s)
        self.at = now

    def spend(self, settings, now):
        """Take one subscribe; the seconds to wait instead, or None."""
        rate, byte_rate = settings.subscribe_rate_per_s, settings.subscribe_replay_bytes_per_s
        elapsed, self.at = now - self.at, now
        self.subscribes = min(rate, self.subscribes + elapsed * rate)
        self.replay = min(byte_rate, self.replay + elapsed * byte_rate)
        if self.replay < 0:
            return -self.replay / byte_rate
        if self.subscribes < 1:
            return (1 - self.subscribes) / rate
        self.subscribes -= 1
        return None


def _rate_limited(connection, settings):
    """The ``rate_limited`` ack if this connection subscribes or replays too fast."""
    now = time.monotonic()
    budget = connection.get("budget")
    if budget is None:
        budget = connection["budget"] = _Budget(settings, now)
    wait = budget.spend(settings, now)
    if wait is None:
        return None
    error = _error("rate_limited", f"Too many subscribes or replayed events; wait {wait:.1f} s.")
    error["error"]["retry_after"] = round(wait, 3)
    return error


# Task id -> its owner, for the newest tasks a subscribe here found owned. A task's owner
# never changes, so a repeated subscribe (another tab, a reconnect, the next page of
# `missed`) skips the ownership read: one Redis round trip. Another owner still reads.
_known_owners: collections.OrderedDict[str, str] = collections.OrderedDict()
MAX_KNOWN_OWNERS = 10_000


def _know_owner(task_id, owner):
    _known_owners[task_id] = owner
    _known_owners.move_to_end(task_id)
    if len(_known_owners) > MAX_KNOWN_OWNERS:
        _known_owners.popitem(last=False)


def on_subscribe(server, services, sid, data):
    connection = server.get_session(sid)
    refused = _rate_limited(connection, services.settings)
    if refused is not None:
        return refused
    task_id, refused = _task_id(data)
    if refused:
        return refused
    after = data.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < MAX_AFTER:
        return _error("invalid_params", f"after: must be an integer from 0 to {MAX_AFTER - 1}")
    store = services.store
    owner = connection.get("owner")
    known = _known_owners.get(task_id)
    if not owner or known is None or not secrets.compare_digest(known, owner):
        if store.owned_record(task_id, owner) is None:
            return _error("not_found", "No such task.")
        _know_owner(task_id, owner)
    subscriptions = connection.setdefault("subscriptions", set())
    # A first subscribe that fails leaves no room or subscription behind; a repeated
    # one (e.g. for the next page of `missed`) keeps the one it had.
    first = task_id not in subscriptions
    if first and len(subscriptions) >= MAX_SUBSCRIPTIONS:
        return _error("invalid_params", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
    # Join (and have the room's channel on this process's subscription) first, read
    # second: an event published in between arrives live and also in `missed`, never
    # in neither; the client drops the duplicate by seq.
    room = protocol.task_room(task_id)
    server.enter_room(sid, room)
    if not services.queue_watch.manager.watch_room(room):
        if first:
            server.leave_room(sid, room)
        return _error("unavailable", "The message queue is not reachable; subscribe again shortly.")
    subscriptions.add(task_id)
    server.save_session(sid, connection)
    try:
        rec, page, next_after, more = store.record_and_events_page(task_id, after, MAX_EVENTS_PAGE)
    except RedisError:  # on_error answers `unavailable`
        if first:
            on_unsubscribe(server, services, sid, {"task_id": task_id})
        raise
    if rec is None:  # removed since the check above
        _known_owners.pop(task_id, None)
        on_unsubscribe(server, services, sid, {"task_id": task_id})
        return _error("not_found", "No such task.")
    # python-socketio encodes the ack itself, so only this bounded page is parsed.
    missed = [json.loads(event) for event in page]
    connection["budget"].replay -= sum(map(len, page))
    services.metrics.replayed(len(missed))
    # more: subscribe again with after=next_after for the next page.
    snapshot = store.snapshot_of(rec)
    return {"ok": True, "task": snapshot, "missed": missed, "more": more, "next_after": next_after}


def on_unsubscribe(server, services, sid, data):
    task_id, refused = _task_id(data)
    if refused:
        return refused
    server.leave_room(sid, protocol.task_room(task_id))
    connection = server.get_session(sid)
    connection.setdefault("subscriptions", set()).discard(task_id)
    server.save_session(sid, connection)
    return {"ok": True}


def on_unknown_event(event, data=None):
    return _error(
        "unknown_event", f"Unknown event {str(event)[:40]!r}; use subscribe or unsubscribe."
    )


def on_error(exc):
    if isinstance(exc, RedisError):
        log.warning("socket handler: Redis error: %s", exc)
        return _error("unavailable", "Storage is unavailable; subscribe again shortly.")
    log.exception("socket handler failed for %s", request.sid)
    return _error("internal_error", "Something went wrong on our side.")
