"""Socket.IO handlers: ``subscribe`` and ``unsubscribe`` with acks (docs/api.md).

``connect`` runs as a Flask-SocketIO handler (it needs the request: the session
cookie, a token, Nginx's identity header) and keeps the owner in the connection's
python-socketio session. ``subscribe`` and ``unsubscribe`` are python-socketio
handlers (:func:`install`): Flask-SocketIO would push a Flask request context for
each, opening the session cookie and matching the URL again, which cost more
than the subscribe itself.
"""

import functools
import json
import logging
import time

import gevent
from flask import current_app, request, session
from flask_socketio import ConnectionRefusedError, join_room
from redis.exceptions import RedisError

from .. import protocol
from . import identity
from .api import MAX_EVENTS_PAGE, MAX_SEQ_DIGITS

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 200
# As GET /events: `after` bounded (a stream id holds 64 bits), a longer backlog in
# pages of MAX_EVENTS_PAGE (the ack says `more`).
MAX_AFTER = 10**MAX_SEQ_DIGITS
# sid -> the timer that ends the socket when its token expires (AUTH_MODE=jwt).
_expiry_timers = {}


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


def register(sio):
    """Register the Flask-SocketIO handlers (connect, disconnect, the catch-all and
    errors) on ``sio``: this project's ``SocketIO`` or an app's own (the extension)."""
    sio.on("connect")(functools.partial(on_connect, sio))
    sio.on("disconnect")(on_disconnect)
    sio.on("*")(on_unknown_event)
    sio.on_error_default(on_error)


def on_connect(sio, auth=None):
    # Live events could not reach this socket while the listener is deaf; refuse,
    # and the client retries until this process (or another replica) can serve it.
    if not _services().queue_watch.healthy:
        raise ConnectionRefusedError("unavailable: the message queue is not reachable")
    # session mode: the handshake carried the cookie (read via `session`); jwt: the
    # CONNECT payload's token; header: Nginx's identity header (identity.py).
    who = _services().identity
    try:
        owner, expires_at = who.owner(request, session, auth)
    except identity.Unauthenticated as exc:
        raise ConnectionRefusedError(
            f"{exc.code}: {exc.message}", {"code": exc.code, "message": exc.message}
        ) from None
    sio.server.save_session(request.sid, {"owner": owner, "subscriptions": set()})
    # Tasks appear wherever their owner looks: `task_created` goes to this room.
    join_room(identity.owner_room(owner))
    if expires_at is not None:
        delay = max(0.0, expires_at - time.time())
        _expiry_timers[request.sid] = gevent.spawn_later(delay, _expire, sio.server, request.sid)


def _expire(server, sid):
    """The token ran out: tell the client (it reconnects with a fresh one), then close."""
    _expiry_timers.pop(sid, None)
    message = "The token has expired; reconnect with a fresh one."
    # Straight to this process's socket, ahead of the disconnect (not via Redis).
    server.emit("error", {"code": "token_expired", "message": message}, to=sid, ignore_queue=True)
    server.disconnect(sid)


def on_disconnect(reason=None):
    timer = _expiry_timers.pop(request.sid, None)
    if timer is not None:
        timer.kill(block=False)


def install(server, services):
    """Register ``subscribe`` and ``unsubscribe`` on python-socketio's ``server``."""
    server.on("subscribe", functools.partial(_guarded, on_subscribe, server, services))
    server.on("unsubscribe", functools.partial(_guarded, on_unsubscribe, server, services))


def _guarded(handler, server, services, sid, data=None):
    """The handler's ack, or the contract's error for what went wrong in it."""
    try:
        return handler(server, services, sid, data)
    except RedisError as exc:
        log.warning("socket handler: Redis error: %s", exc)
        return _error("unavailable", "Storage is unavailable; subscribe again shortly.")
    except Exception:
        log.exception("socket handler failed for %s", sid)
        return _error("internal_error", "Something went wrong on our side.")


def on_subscribe(server, services, sid, data):
    task_id, refused = _task_id(data)
    if refused:
        return refused
    after = data.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < MAX_AFTER:
        return _error("invalid_params", f"after: must be an integer from 0 to {MAX_AFTER - 1}")
    store, connection = services.store, server.get_session(sid)
    if store.owned_record(task_id, connection.get("owner")) is None:
        return _error("not_found", "No such task.")
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
        on_unsubscribe(server, services, sid, {"task_id": task_id})
        return _error("not_found", "No such task.")
    # python-socketio encodes the ack itself, so only this bounded page is parsed.
    missed = [json.loads(event) for event in page]
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
