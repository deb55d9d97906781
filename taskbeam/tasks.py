"""Creating a task, the one way both ``POST /api/tasks`` and :func:`taskbeam.submit` do it:
validate the params against the kind's declaration, store the task (within
MAX_ACTIVE_TASKS), send its broker message, and tell the owner's open pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import observability, registry, workflows
from .registry import Job, Params
from .workflows import Plan

log = logging.getLogger(__name__)

#: Sent to every socket of the task's owner when a task is created (docs/api.md).
TASK_CREATED_EVENT = "task_created"


class QueueUnavailable(RuntimeError):
    """The broker did not take the task's message; nothing was left behind."""


def validate(kind: Any, params: Any, settings: Any) -> tuple[Job, Params, Plan | None]:
    """The kind, the clean params and a workflow's children; raises ``UnknownKind``
    (also for a kind that only runs as a child) or ``ParamError``."""
    job = registry.get(kind, listed=True)
    model = job.load({} if params is None else params, settings)
    plan = workflows.make_plan(job, model, settings) if job.is_workflow else None
    return job, model.model_dump(mode="json", exclude_none=True), plan


def enqueue(
    job: Job,
    params: Params,
    plan: Plan | None = None,
    *,
    owner: str,
    store: Any,
    celery: Any,
    announce: Callable[[str, dict[str, Any]], None],
    create: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """Store the task and send it to the workers; its 202 snapshot.

    ``create(kind=, owner=, params=)`` stores it behind the limits
    (:func:`taskbeam.quotas.create`): ``TooManyActive`` past MAX_ACTIVE_TASKS,
    ``quotas.Refused`` past a quota. :class:`QueueUnavailable` when the broker refuses
    (the stored task is removed again). ``announce(owner, snapshot)`` tells the owner's
    pages (their sockets join the owner's room).
    """
    snapshot = create(kind=job.kind, owner=owner, params=params)
    try:
        if plan is not None:
            _create_children(store, job, snapshot, plan)
        # The request's id and owner hash ride along: the worker's lines carry them.
        celery.send_task(
            job.celery_name,
            args=[snapshot["id"], params],
            task_id=snapshot["id"],
            headers=observability.task_headers(),
        )
    except Exception:
        log.exception("could not enqueue task %s", snapshot["id"])
        store.delete(snapshot["id"], owner)
        raise QueueUnavailable("The task queue is unavailable; try again.") from None
    try:
        announce(owner, snapshot)
    except Exception:  # the task runs all the same; pages list it on their next load
        log.warning("task %s: could not tell the owner's pages", snapshot["id"], exc_info=True)
    return snapshot


def _create_children(store: Any, job: Job, snapshot: dict[str, Any], plan: Plan) -> None:
    """Store the workflow's children with it; its parent's run sends them."""
    stage = job.stages[0][0]
    store.create_children(
        snapshot,
        plan.children,
        span=job.stage_span(stage)[1],
        allow_failures=plan.allow_failures,
        fan_in=job.fan_in is not None,
        stage=stage,
    )
    snapshot["children"] = {"total": len(plan.children), "done": 0, "failed": 0}
