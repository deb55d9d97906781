"""REST endpoints of docs/api.md. Every error is its JSON shape."""

import functools
import json
import logging
import time
from datetime import datetime

from flask import Blueprint, Response, current_app, g, jsonify, request, session, url_for
from redis.exceptions import RedisError

from .. import broker, export, observability, protocol, quotas, registry, tasks
from ..protocol import MAX_CHILDREN_PAGE, MAX_EVENTS_PAGE, MAX_SEQ_DIGITS
from ..store import Keys, TaskFinished, TaskGone, TooManyActive
from . import errors, identity
from .errors import ApiError, error_response
from .front import origin_allowed, own_origin
from .metrics import render_operator_gauges, resource_gauges
from .openapi import openapi_document

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)

STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
# Lifetime of a token from the dev login (AUTH_DEV_LOGIN=1).
DEV_TOKEN_TTL_S = 3600


def services():
    return current_app.extensions["taskbeam"]


def not_found():
    return ApiError(404, "not_found", "No such task.")


def current_owner():
    """The request's task owner (AUTH_MODE; identity.py), or 401 without credentials."""
    if "owner" not in g:
        try:
            g.owner, _expires = services().identity.owner(request, session)
        except identity.Unauthenticated as exc:
            raise ApiError(
                401, exc.code, exc.message, {"WWW-Authenticate": exc.challenge}
            ) from None
        # Its hash, on this request's log lines (and its tasks').
        observability.bind(owner=observability.owner_hash(g.owner))
    return g.owner


def owned_record(task_id):
    owner = current_owner()
    # A malformed id never reaches a Redis key (``<id>:events`` would name the stream).
    if not protocol.valid_task_id(task_id):
        raise not_found()
    rec = services().store.owned_record(task_id, owner)
    if rec is None:
        raise not_found()
    return rec


def json_body(allow_empty=False):
    """The request body as a JSON object; enforces content type and syntax."""
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    if allow_empty and not raw.strip():
        return {}
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting past the C stack
        raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return body


def ascii_int(name, default, low, high):
    """A query parameter of ASCII digits (str.isdigit also takes '²' and '١٢') in low..high."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw) > MAX_SEQ_DIGITS
        or not low <= int(raw) <= high
    ):
        raise ApiError(400, "invalid_params", f"{name}: must be an integer from {low} to {high}")
    return int(raw)


def rate_windows(owner, window):
    """``(key, limit, scope, setting)`` of the creation windows (minute ``window``) that
    count this request: one per session, one per client address."""
    svc = services()
    keys = Keys(svc.settings.namespace)
    return (
        (
            keys.rate(owner, window),
            svc.settings.rate_limit_per_minute,
            "per session",
            "RATE_LIMIT_PER_MINUTE",
        ),
        (
            keys.rate_ip(quotas.address_key(request.remote_addr), window),
            svc.settings.rate_limit_per_ip_per_minute,
            "per address",
            "RATE_LIMIT_PER_IP_PER_MINUTE",
        ),
    )


def check_rate(owner, cost=1):
    """Fixed one-minute windows on task creation: one per session, one per client address.

    A request that stores ``cost`` tasks (a workflow: itself and its children) counts
    ``cost`` creations in each window, and is refused unless all of them fit in both;
    a refused request is not counted. A plan larger than a whole window is a 400 (it
    would never fit). Returns the charge, for :func:`refund` if the task is then not
    stored after all.

    Dropping the cookie makes a new session; the address (Nginx's, see front.trust_nginx)
    still counts every creation.
    """
    svc = services()
    now = int(time.time())
    windows = rate_windows(owner, now // 60)
    for _key, limit, scope, setting in windows:
        if cost > limit:
            raise ApiError(
                400,
                "invalid_params",
                f"params: this workflow would create {cost} tasks (itself and its "
                f"{cost - 1} children); at most {limit} task creations a minute are "
                f"allowed {scope} ({setting}).",
            )
    charged = []
    for key, limit, scope, _setting in windows:
        pipe = svc.redis.pipeline(transaction=True)
        pipe.incrby(key, cost)
        pipe.expire(key, 120)
        charged.append(key)
        if pipe.execute()[0] > limit:
            # Never admits more than the limit: an admitted charge is never given back
            # while one that does not fit is, so concurrent requests only err on refusing.
            refund(charged, cost)
            raise ApiError(
                429,
                "rate_limited",
                f"At most {limit} tasks per minute {scope}"
                + (f"; this workflow adds {cost} (itself and its children)." if cost > 1 else "."),
                {"Retry-After": str(60 - now % 60)},
            )
    return charged, cost


def refund(keys, cost):
    """Give back a charge of :func:`check_rate` (the task was not stored)."""
    pipe = services().redis.pipeline(transaction=True)
    for key in keys:
        pipe.decrby(key, cost)
    pipe.execute()


@bp.before_app_request
def refuse_foreign_origin():
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, services().settings, own_origin()):
        raise ApiError(403, "forbidden_origin", "This origin is not allowed.")


@bp.teardown_app_request
def forget_log_ids(_exc):
    # The owner bound by current_owner (and the request id) end with the request.
    observability.clear()


@bp.before_request
def require_owner():
    # Credentials before anything else about a task request: no 404 vs 400 oracle.
    if request.path.startswith(("/api/tasks", "/api/kinds")):
        current_owner()


@bp.post("/api/tasks")
def create_task():
    owner = current_owner()
    body = json_body()
    kind, params = body.get("kind"), body.get("params", {})
    unknown = sorted(set(body) - {"kind", "params"})
    if unknown:
        raise ApiError(400, "invalid_params", f"{unknown[0]}: unknown field")
    svc = services()
    try:
        job, params, plan = tasks.validate(kind, params, svc.settings)
    except registry.UnknownKind as exc:
        raise ApiError(400, "invalid_params", str(exc)) from None
    except registry.ParamError as exc:
        field = exc.field if exc.field == "params" else f"params.{exc.field}"
        raise ApiError(400, "invalid_params", f"{field}: {exc.reason}") from None
    charge = check_rate(owner, 1 + (len(plan.children) if plan is not None else 0))
    try:
        snapshot = tasks.enqueue(
            job,
            params,
            plan,
            owner=owner,
            store=svc.store,
            celery=svc.celery,
            announce=announce,
            create=functools.partial(quotas.create, svc, address=request.remote_addr),
        )
    except TooManyActive as exc:
        refund(*charge)
        raise ApiError(
            429,
            "too_many_active",
            f"At most {exc.limit} queued or running tasks at once; wait for one "
            "to finish or cancel one.",
            {"Retry-After": "5"},
        ) from None
    except quotas.Refused:
        refund(*charge)
        raise
    except tasks.QueueUnavailable as exc:
        refund(*charge)
        raise ApiError(503, "unavailable", str(exc)) from None
    log.info(
        "task %s created: %s",
        snapshot["id"],
        job.kind,
        extra={"task_id": snapshot["id"], "kind": job.kind},
    )
    response = jsonify(snapshot)
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_task", task_id=snapshot["id"])
    return response


def announce(owner, snapshot):
    """Every open page of the owner lists the new task at once (docs/api.md)."""
    services().socketio.emit(tasks.TASK_CREATED_EVENT, snapshot, to=identity.owner_room(owner))


@bp.get("/api/kinds")
def list_kinds():
    settings = services().settings
    listed = [job for kind, job in sorted(registry.JOBS.items()) if job.listed]
    return {"kinds": [job.describe(settings) for job in listed]}


@bp.get("/api/tasks")
def list_tasks():
    store = services().store
    return {"tasks": store.add_queue_positions(store.list_for_owner(current_owner()))}


@bp.get("/api/tasks/<task_id>")
def get_task(task_id):
    snapshot = services().store.snapshot_of(owned_record(task_id))
    return services().store.add_queue_positions([snapshot])[0]


@bp.delete("/api/tasks/<task_id>")
def delete_task(task_id):
    """Clear a finished task: its snapshot and events are gone for good."""
    json_body(allow_empty=True)
    rec = owned_record(task_id)
    try:
        removed = services().store.remove_finished(task_id, current_owner())
    except TaskGone:
        raise not_found() from None  # expired since the lookup
    if not removed:
        raise ApiError(
            409, "not_finished", f"The task is {rec['state']}; cancel it or wait for it to end."
        )
    quotas.forget_export(services().redis, services().settings, task_id, rec)
    return Response(status=204)


@bp.get("/api/tasks/<task_id>/events")
def task_events(task_id):
    """One page of stored events; the body is spliced from the stored JSON, not re-encoded."""
    owned_record(task_id)
    after = ascii_int("after", 0, 0, 10**MAX_SEQ_DIGITS - 1)
    limit = ascii_int("limit", MAX_EVENTS_PAGE, 1, MAX_EVENTS_PAGE)
    events, next_after, has_more = services().store.events_page(task_id, after, limit)
    body = (
        f'{{"events":[{",".join(events)}],'
        f'"has_more":{"true" if has_more else "false"},"next_after":{next_after}}}'
    )
    return Response(body, mimetype="application/json")


@bp.get("/api/tasks/<task_id>/children")
def task_children(task_id):
    """One page of a workflow's children, in the plan's order (none for other tasks)."""
    owned_record(task_id)
    offset = ascii_int("offset", 0, 0, 1_000_000)
    limit = ascii_int("limit", 50, 1, MAX_CHILDREN_PAGE)
    total, children = services().store.children_page(task_id, offset, limit)
    return {"total": total, "offset": offset, "children": children}


@bp.post("/api/tasks/<task_id>/cancel")
def cancel_task(task_id):
    json_body(allow_empty=True)
    rec = owned_record(task_id)
    svc = services()
    if rec["state"] in protocol.TERMINAL_STATES:
        raise ApiError(409, "already_finished", f"The task already {rec['state']}.")
    svc.store.request_cancel(task_id)
    if rec["state"] == protocol.QUEUED:
        # Not started: end it here; a worker that picks it up later finds it terminal.
        svc.celery.control.revoke(task_id)
        try:
            svc.emitter.emit(task_id, state=protocol.CANCELLED, message="Cancelled")
        except TaskFinished:
            pass  # a worker finished or cancelled it first
    elif rec.get("phase") == "children":
        # A workflow waiting for its children: no run of its own would see the ask.
        try:
            svc.emitter.emit(task_id, state=protocol.CANCELLED, message="Cancelled")
        except TaskFinished:
            pass  # its last child ended it first
    # Running: the worker stops at its next progress report and emits `cancelled`.
    if rec.get("kids_total"):
        svc.emitter.cancel_children(task_id)
    response = jsonify(svc.store.snapshot_of(svc.store.record(task_id)))
    response.status_code = 202
    return response


@bp.get("/api/tasks/<task_id>/download")
def download(task_id):
    """The export file, served by Nginx: this only checks the owner and the expiry."""
    rec = owned_record(task_id)
    snap = services().store.snapshot_of(rec)
    result = snap.get("result") or {}
    fmt = next((f for f in export.FORMATS if result.get("filename", "").endswith(f".{f}")), None)
    if snap["kind"] != "export" or fmt is None:
        raise not_found()
    expires_at = datetime.fromisoformat(result["expires_at"].replace("Z", "+00:00"))
    if expires_at.timestamp() <= time.time():
        raise ApiError(410, "expired", "This export has expired; run it again.")
    response = Response(status=200, mimetype=None)
    response.headers["Content-Type"] = export.FORMATS[fmt]
    response.headers["Content-Disposition"] = f'attachment; filename="{result["filename"]}"'
    # An internal Nginx location; the path is built from the checked task id and
    # the run that succeeded (the store's current token) only.
    name = export.export_file_name(task_id, rec.get("fence", "0"), fmt)
    response.headers["X-Accel-Redirect"] = f"/_exports/{name}"
    return response


# Registered only with AUTH_DEV_LOGIN=1 (AUTH_MODE=jwt, HS256): the demo page's login.
dev_bp = Blueprint("dev_login", __name__)


@dev_bp.post("/api/dev/token")
def dev_token():
    """A token for any user name, signed with JWT_SECRET: for demos, never production."""
    user = json_body().get("user")
    if not isinstance(user, str) or not 0 < len(user) <= identity.MAX_USER_CHARS:
        raise ApiError(400, "invalid_params", "user: must be a non-empty name")
    token = services().identity.verifier.mint(user, DEV_TOKEN_TTL_S)
    return {"token": token, "expires_in": DEV_TOKEN_TTL_S}


@bp.get("/api/openapi.json")
def openapi():
    return openapi_document(services().settings)


@bp.get("/metrics")
def metrics():
    svc = services()
    text = svc.metrics.render(svc.queue_watch.manager)
    try:
        gauges = svc.store.operator_gauges()
        gauges["queue_length"] = broker.queue_length(svc.redis, svc.celery)
        text += render_operator_gauges(gauges)
        text += resource_gauges(svc.redis, svc.settings)
    except RedisError:
        pass  # Redis down: this process's own counters still answer
    return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    svc = services()
    try:
        svc.redis.ping()
    except RedisError:
        raise ApiError(503, "unavailable", "Redis is unreachable.") from None
    if not svc.queue_watch.healthy:
        raise ApiError(503, "unavailable", "The message-queue listener is not receiving.")
    return {"status": "ready"}


# The API's own answers are the contract's JSON in an app of your own too (the extension).
errors.register_error_handlers(bp)


@bp.app_errorhandler(ApiError)
def api_error_in_the_app(exc):
    # The origin check runs before every request of the app (the extension's too): on
    # the app's own routes its 403 is the contract's JSON as well, not a 500.
    return error_response(exc.status, exc.code, exc.message, exc.headers)
