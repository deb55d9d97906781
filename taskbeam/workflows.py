"""A workflow's plan: the children its ``plan`` function returns (:class:`Child`,
:class:`Group`), and those children checked, as stored with the parent
(:func:`make_plan`). The workflow kind itself registers with
:func:`taskbeam.registry.workflow`; its runs are the worker's (:mod:`taskbeam.worker`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from .registry import JOBS, Job, ParamError, Params

if TYPE_CHECKING:
    from .config import Settings


@dataclasses.dataclass(frozen=True)
class Child:
    """One child task of a workflow: a registered kind, its params and its share
    of the parent's bar (``weight``, any positive number; e.g. rows to process)."""

    kind: str
    params: Any = None
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Group:
    """A workflow's children, run in parallel; ``allow_failures``: a child that fails
    does not fail the parent (the fan-in receives None for it)."""

    children: Sequence[Child]
    allow_failures: bool = False


@dataclasses.dataclass(frozen=True)
class PlannedChild:
    """A child as stored: its kind checked, its params clean."""

    kind: str
    params: Params
    weight: float


@dataclasses.dataclass(frozen=True)
class Plan:
    children: tuple[PlannedChild, ...]
    allow_failures: bool


def make_plan(job: Job, params: pydantic.BaseModel, settings: Settings | None = None) -> Plan:
    """The children of the workflow ``job`` for ``params``, each checked as a task of
    its own would be; raises :class:`ParamError` (field ``params``) naming the child."""
    assert job.plan is not None
    made = job.plan(params)
    group = made if isinstance(made, Group) else Group(list(made or ()))
    limit = settings.max_workflow_children if settings is not None else 1_000
    if not 1 <= len(group.children) <= limit:
        raise ParamError(
            "params", f"a workflow has 1 to {limit} children, got {len(group.children)}"
        )
    children = []
    for i, child in enumerate(group.children):
        where = f"child {i}"
        if not isinstance(child, Child):
            raise ParamError("params", f"{where}: the plan must give Child(...) values")
        found = JOBS.get(child.kind)
        if found is None or found.is_workflow:
            raise ParamError("params", f"{where}: {child.kind!r} is not a job kind")
        weight = child.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ParamError("params", f"{where}: weight must be a number")
        if not (math.isfinite(weight) and weight > 0):
            raise ParamError("params", f"{where}: weight must be positive, got {weight}")
        try:
            clean = found.validate({} if child.params is None else child.params, settings)
        except ParamError as exc:
            raise ParamError("params", f"{where} ({child.kind}): {exc}") from None
        children.append(PlannedChild(child.kind, clean, float(weight)))
    return Plan(tuple(children), bool(group.allow_failures))
