"""``taskbeam.submit()``: start a task from a team's own code, outside a request."""

from __future__ import annotations

import functools
import json
import os
import threading
import types
from typing import Any

from . import config, protocol, quotas, registry, tasks
from .runtime import Runtime, make_runtime

_runtime: Runtime | None = None
_lock = threading.Lock()


def default_runtime() -> Runtime:
    """This process's store, broker and emitter, made on first use (from the environment)."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = config.current()
            registry.load_modules(settings.jobs_modules)
            _runtime = make_runtime(settings)
        return _runtime


def _app_identity_mode() -> str | None:
    """In a request or app context of a Taskbeam app (the extension's), its identity
    mode: there its own login names owners, whatever AUTH_MODE says."""
    try:
        from flask import current_app

        return str(current_app.extensions["taskbeam"].identity.mode)
    except (ImportError, RuntimeError, KeyError, AttributeError):
        return None


def owner_for(user: str, env: Any = None) -> str:
    """The owner id the web gives ``user``: as the current Taskbeam app names owners,
    or else under this deployment's AUTH_MODE."""
    if not isinstance(user, str) or not 0 < len(user) <= 255:
        raise ValueError("owner: must be a user name of 1 to 255 characters")
    env = os.environ if env is None else env
    mode = _app_identity_mode() or env.get("AUTH_MODE", "").strip().lower() or "session"
    if mode == "jwt":
        return protocol.owner_id("jwt", json.dumps([env.get("JWT_ISSUER", "").strip(), user]))
    if mode == "header":
        return protocol.owner_id("header", user)
    return protocol.owner_id("app", user)  # the extension's owner_of(request)


def submit(kind: Any, params: Any, *, owner: str, runtime: Runtime | None = None) -> dict[str, Any]:
    runtime = runtime or default_runtime()
    job, clean, plan = tasks.validate(kind, params, runtime.settings)
    owner_id = owner_for(owner)

    def announce(owner_id: str, snapshot: dict[str, Any]) -> None:
        runtime.emitter.socketio.emit(
            tasks.TASK_CREATED_EVENT, snapshot, to=protocol.owner_room(owner_id)
        )

    # The API's guards but the per-address ones: memory, export bytes, MAX_ACTIVE_TASKS.
    guarded = types.SimpleNamespace(
        settings=runtime.settings,
        redis=runtime.store.redis,
        store=runtime.store,
        identity=types.SimpleNamespace(mode="app"),  # a named user: the normal retention
    )
    return tasks.enqueue(
        job,
        clean,
        plan,
        owner=owner_id,
        store=runtime.store,
        celery=runtime.celery,
        announce=announce,
        create=functools.partial(quotas.create, guarded),
    )
