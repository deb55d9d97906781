"""``taskbeam.submit()``: start a task from a team's own code, outside a request."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from . import config, protocol, registry, tasks
from .runtime import Runtime, make_runtime

_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's store, broker and emitter, made on first use (from the environment)."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = config.current()
            registry.load_modules(settings.jobs_modules)
            _runtime = make_runtime(settings)
        return _runtime


def owner_for(user: str, env: Any = None) -> str:
    """The owner id the web gives ``user`` under this deployment's AUTH_MODE."""
    if not isinstance(user, str) or not 0 < len(user) <= 255:
        raise ValueError("owner: must be a user name of 1 to 255 characters")
    env = os.environ if env is None else env
    mode = env.get("AUTH_MODE", "").strip().lower() or "session"
    if mode == "jwt":
        return protocol.owner_id("jwt", json.dumps([env.get("JWT_ISSUER", "").strip(), user]))
    if mode == "header":
        return protocol.owner_id("header", user)
    return protocol.owner_id("app", user)  # the extension's owner_of(request)


def submit(kind: Any, params: Any, *, owner: str, rt: Runtime | None = None) -> dict:
    rt = rt or runtime()
    job, clean = tasks.validate(kind, params, rt.settings)
    owner_id = owner_for(owner)

    def announce(owner_id: str, snapshot: dict) -> None:
        rt.emitter.socketio.emit(
            tasks.TASK_CREATED_EVENT, snapshot, to=protocol.owner_room(owner_id)
        )

    return tasks.enqueue(
        job,
        clean,
        owner=owner_id,
        store=rt.store,
        celery=rt.celery,
        settings=rt.settings,
        announce=announce,
    )
