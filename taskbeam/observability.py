"""Log lines an operator can follow: ``LOG_FORMAT=json`` and the ids each line carries.

Every record passes :class:`ContextFilter`, which adds the ids of what the process is
doing at the time, from context variables (per greenlet in the web, per task in a
worker's child process):

- ``request_id``: Nginx's ``$request_id`` (``X-Request-ID``), or one the web made;
- ``task_id`` and ``run`` (the run's lease token: 1 for a first run, more after a
  redelivery);
- ``owner``: a hash of the task's owner, never the owner id itself.

The web hands ``request_id`` and ``owner`` to the task in its broker message's
headers (:func:`task_headers`), so the worker's lines of that task carry them too.
Plain text (the default) prints the same lines as before, without the ids.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import tracing

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: The ids a line may carry, in this order; absent ones are left out.
FIELDS = ("request_id", "task_id", "run", "owner")
#: Broker message headers that carry a request's ids to its task.
HEADER_PREFIX = "taskbeam_"
# What a request id from the proxy may look like (Nginx's is 32 hex digits): anything
# else is replaced, so a client cannot write what it likes into every line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Paths of the health checks: their access lines say nothing and come every few seconds.
HEALTH_PATHS = ("/healthz", "/readyz", "/nginx-health", "/flower/healthcheck")
ACCESS_LOGGERS = ("geventwebsocket.handler", "tornado.access", "gunicorn.access")

_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"taskbeam_{name}", default=None) for name in FIELDS
}


def owner_hash(owner: str) -> str:
    """What the lines say of an owner: enough to group them, not the id itself."""
    return hashlib.sha256(f"taskbeam-log\0{owner}".encode()).hexdigest()[:16]


def request_id(incoming: str | None = None) -> str:
    """``incoming`` if it looks like a request id, else a new one."""
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def current() -> dict[str, str]:
    """The ids bound now (only those set)."""
    ids = {}
    for name, var in _context.items():
        value = var.get()
        if value is not None:
            ids[name] = value
    return ids


def bind(**ids: Any) -> list[tuple[contextvars.ContextVar[str | None], contextvars.Token[Any]]]:
    """Set ids (``owner=`` is :func:`owner_hash`'s); the tokens to undo it."""
    return [
        (_context[name], _context[name].set(None if value is None else str(value)))
        for name, value in ids.items()
    ]


def unbind(tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[Any]]]) -> None:
    for var, token in reversed(tokens):
        var.reset(token)


def clear() -> None:
    """Unset every id (where no token is at hand, e.g. after a request)."""
    for var in _context.values():
        var.set(None)


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    tokens = bind(**ids)
    try:
        yield
    finally:
        unbind(tokens)


def task_headers() -> dict[str, str]:
    """Broker message headers that give a task the ids of the request creating it."""
    ids = current()
    return {f"{HEADER_PREFIX}{name}": ids[name] for name in ("request_id", "owner") if name in ids}


def from_headers(headers: Mapping[str, Any] | Any) -> dict[str, str]:
    """The ids :func:`task_headers` put in a message (``owner`` already hashed)."""
    ids = {}
    for name in ("request_id", "owner"):
        value = _get(headers, f"{HEADER_PREFIX}{name}")
        if isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            ids[name] = value
    return ids


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


class ContextFilter(logging.Filter):
    """Adds the bound ids to each record; Celery's own task lines name their task."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current()
        args = record.args
        task_id = args.get("id") if isinstance(args, Mapping) else None
        if "task_id" not in ids and isinstance(task_id, str):
            ids["task_id"] = task_id  # "Task %(name)s[%(id)s] succeeded ..."
        trace_id = tracing.current_trace_id()
        if trace_id is not None:
            ids["trace_id"] = trace_id
        for name, value in ids.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class HealthCheckFilter(logging.Filter):
    """Drops access lines of the health checks (``"GET /readyz HTTP/1.0" 200 ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        return not any(f" {path}" in text for path in HEALTH_PATHS)


def formatter(log_format: str) -> logging.Formatter:
    if log_format != "json":
        return logging.Formatter(TEXT_FORMAT)
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def handler(log_format: str, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) in ``log_format``, with the ids."""
    out = logging.StreamHandler(sys.stderr if stream is None else stream)
    out.setFormatter(formatter(log_format))
    out.addFilter(ContextFilter())
    return out


def configure(log_format: str, level: str | int = logging.INFO, stream: Any = None) -> None:
    """Root logging in ``log_format``: one handler, replacing any there was."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(log_format, stream))
    root.setLevel(level)
    drop_health_checks()


def drop_health_checks() -> None:
    """No access lines for the health checks: the web's (gevent-websocket's handler
    logs every request), Flower's (Tornado's), Gunicorn's if someone enables it."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HealthCheckFilter) for f in logger.filters):
            logger.addFilter(HealthCheckFilter())


def gunicorn_logconfig(log_format: str) -> dict[str, Any]:
    """Gunicorn's ``logconfig_dict`` for ``log_format``: its own lines through ours."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"taskbeam": {"()": f"{__name__}.formatter", "log_format": log_format}},
        "filters": {
            "ids": {"()": f"{__name__}.ContextFilter"},
            "health": {"()": f"{__name__}.HealthCheckFilter"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "taskbeam",
                "filters": ["ids"],
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {
                "level": "INFO",
                "handlers": [],
                "filters": ["health"],
                "propagate": True,
            },
        },
    }
