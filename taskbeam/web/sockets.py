"""Socket.IO handlers: ``subscribe`` and ``unsubscribe`` with acks (CONTRACT.md)."""
import logging

from flask import current_app, request, session
from flask_socketio import ConnectionRefusedError, join_room, leave_room
from redis.exceptions import RedisError

from .. import protocol
from . import socketio

log = logging.getLogger(__name__)

MAX_TASK_ID_LENGTH = 64
MAX_SUBSCRIPTIONS = 200


def _services():
    return current_app.extensions["taskbeam"]


def _store():
    return _services().store


def _error(code, message):
    return {"ok": False, "error": {"code": code, "message": message}}


def _task_id(data):
    task_id = data.get("task_id") if isinstance(data, dict) else None
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID_LENGTH:
        return None
    return task_id


@socketio.on("connect")
def on_connect(auth=None):
    # Live events could not reach this socket while the listener is deaf; refuse,
    # and the client retries until this process (or another replica) can serve it.
    if not _services().queue_watch.healthy:
        raise ConnectionRefusedError("unavailable: the message queue is not reachable")
    # The handshake carried the session cookie (read via `session`): the owner.
    session["subscriptions"] = set()


@socketio.on("subscribe")
def on_subscribe(data=None):
    task_id = _task_id(data)
    if task_id is None:
        return _error("invalid_params", "task_id: must be a non-empty string")
    after = data.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        return _error("invalid_params", "after: must be an integer >= 0")
    store = _store()
    rec = store.owned_record(task_id, session.get("owner"))
    if rec is None:
        return _error("not_found", "No such task.")
    subscriptions = session.setdefault("subscriptions", set())
    if task_id not in subscriptions and len(subscriptions) >= MAX_SUBSCRIPTIONS:
        return _error("invalid_params", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
    # Join first, read second: an event published in between arrives live and
    # also in `missed`, never in neither; the client drops the duplicate by seq.
    join_room(protocol.task_room(task_id))
    subscriptions.add(task_id)
    snapshot = store.snapshot_of(store.record(task_id) or rec)
    missed = store.events_after(task_id, after)
    _services().queue_watch.manager.metrics.replayed(len(missed))
    return {"ok": True, "task": snapshot, "missed": missed}


@socketio.on("unsubscribe")
def on_unsubscribe(data=None):
    task_id = _task_id(data)
    if task_id is None:
        return _error("invalid_params", "task_id: must be a non-empty string")
    leave_room(protocol.task_room(task_id))
    session.setdefault("subscriptions", set()).discard(task_id)
    return {"ok": True}


@socketio.on("*")
def on_unknown_event(event, data=None):
    return _error("unknown_event", f"Unknown event {str(event)[:40]!r}; use subscribe or unsubscribe.")


@socketio.on_error_default
def on_error(exc):
    if isinstance(exc, RedisError):
        log.warning("socket handler: Redis error: %s", exc)
        return _error("unavailable", "Storage is unavailable; subscribe again shortly.")
    log.exception("socket handler failed for %s", request.sid)
    return _error("internal_error", "Something went wrong on our side.")
