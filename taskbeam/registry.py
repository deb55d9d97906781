"""The job registry: what a job kind is, how it is registered and loaded.

A kind is a function and the one declaration of its parameters, a pydantic model.
That model validates what clients send (the API's 400 ``invalid_params`` names the
field), gives the OpenAPI document and the page's form (its JSON Schema), and is
what the function receives. Kinds register by being imported: the shipped ones by
``taskbeam.jobs``, a team's own through ``JOBS_MODULES`` (:func:`load_modules`).
"""

from __future__ import annotations

import contextvars
import datetime
import importlib
import json
import math
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pydantic

if TYPE_CHECKING:
    from .config import Settings

Params = dict[str, Any]
#: ``func(params model) -> JSON-able result``.
JobFunc = Callable[[Any], Any]
KIND_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")
#: The settings a schema is made for, for a model whose schema depends on them
#: (export's columns): read it in a ``json_schema_extra`` callable.
schema_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "schema_settings", default=None
)


class ParamError(ValueError):
    """Bad job parameters; ``field`` names the offending one (dotted for nested)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownKind(LookupError):
    """No job kind of that name is registered."""

    def __init__(self, kind: object) -> None:
        listed = sorted(kind for kind, job in JOBS.items() if job.listed)
        super().__init__(f"kind: must be one of {', '.join(listed)}")
        self.kind = kind


class RegistryError(RuntimeError):
    """A kind or a jobs module that cannot be registered; start-up stops on it."""


#: A job's stages: ``(name, weight)`` in order; a name is what the page shows.
Stages = tuple[tuple[str, float], ...]
MAX_STAGE_NAME = 40


class Job:
    """A registered job kind: its function, its parameter model and how the page shows it.

    A workflow kind (:func:`workflow`) has ``plan`` (its children, from the params:
    see :mod:`taskbeam.workflows`) and maybe ``fan_in``; its own ``func`` is not run.
    """

    def __init__(
        self,
        kind: str,
        func: JobFunc,
        params: type[pydantic.BaseModel],
        *,
        title: str,
        description: str,
        units: str,
        summary: Callable[[Any], str] | None = None,
        stages: Stages = (),
        plan: Callable[[Any], Any] | None = None,
        fan_in: Callable[[Any, list[Any]], Any] | None = None,
        listed: bool = True,
    ) -> None:
        self.kind, self.func, self.params = kind, func, params
        self.title, self.description, self.units = title, description, units
        self.summary = summary
        self.stages, self.plan, self.fan_in, self.listed = stages, plan, fan_in, listed

    @property
    def is_workflow(self) -> bool:
        return self.plan is not None

    def stage_span(self, name: str) -> tuple[float, float]:
        """Where stage ``name`` lies on the whole bar: ``(start %, width %)``;
        raises ValueError for a stage the kind does not declare."""
        total = sum(weight for _, weight in self.stages)
        start = 0.0
        for stage, weight in self.stages:
            if stage == name:
                return start * 100 / total, weight * 100 / total
            start += weight
        declared = ", ".join(repr(s) for s, _ in self.stages) or "none"
        raise ValueError(f"job {self.kind!r} has no stage {name!r} (declared: {declared})")

    @property
    def celery_name(self) -> str:
        return f"taskbeam.{self.kind}"

    def load(self, params: Any, settings: Settings | None = None) -> pydantic.BaseModel:
        """``params`` (JSON values) as the kind's model; raises :class:`ParamError`.

        Strict, as JSON: ``"5"`` is not an integer, ``true`` is not 1; a date is
        ``YYYY-MM-DD``. ``settings`` reach the model's validators as
        ``info.context["settings"]`` (None: read them yourself).
        """
        if isinstance(params, pydantic.BaseModel):  # from submit(): checked again all the same
            params = params.model_dump(mode="json", exclude_unset=True)
        if not isinstance(params, dict):
            raise ParamError("params", "must be a JSON object")
        try:
            text = json.dumps(params, default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ParamError("params", f"must hold JSON values only ({exc})") from None
        try:
            return self.params.model_validate_json(
                text, strict=True, context={"settings": settings}
            )
        except pydantic.ValidationError as exc:
            raise _param_error(exc.errors()[0]) from None

    def validate(self, params: Any, settings: Settings | None = None) -> Params:
        """The clean params to store and send to the worker (JSON values, unset
        optional fields left out); raises :class:`ParamError`."""
        model = self.load(params, settings)
        return model.model_dump(mode="json", exclude_none=True)

    def schema(self, settings: Settings | None = None) -> dict[str, Any]:
        """The params' JSON Schema, as the page's form and the OpenAPI document use it."""
        token = schema_settings.set(settings)
        try:
            return self.params.model_json_schema()
        finally:
            schema_settings.reset(token)

    def describe(self, settings: Settings | None = None) -> dict[str, Any]:
        """What ``GET /api/kinds`` says of this kind."""
        return {
            "kind": self.kind,
            "title": self.title,
            "description": self.description,
            "units": self.units,
            "stages": [{"name": name, "weight": weight} for name, weight in self.stages],
            "workflow": self.is_workflow,
            "schema": self.schema(settings),
        }


def _json_default(value: Any) -> Any:
    """Dates as ISO strings (what the API would receive); nothing else that JSON lacks."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _param_error(error: Any) -> ParamError:
    """pydantic's first error as a :class:`ParamError` naming the field."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):  # raised by a model validator that knows its field
        return cause
    field = ".".join(str(part) for part in error["loc"]) or "params"
    reason = {
        "extra_forbidden": "unknown parameter",
        "missing": "is required",
    }.get(error["type"], error["msg"])
    if error["type"] == "value_error" and reason.startswith("Value error, "):
        reason = reason[len("Value error, ") :]
    return ParamError(field, reason)


JOBS: dict[str, Job] = {}
#: The kinds Taskbeam ships (export, simulate): loaded with every JOBS_MODULES.
SHIPPED = "taskbeam.jobs"


def _stages(kind: str, stages: Mapping[str, float] | Sequence[tuple[str, float]] | None) -> Stages:
    """``stages`` checked: names unique and short, weights positive numbers."""
    if stages is None:
        return ()
    items = list(stages.items() if isinstance(stages, Mapping) else stages)
    names = [name for name, _ in items]
    for name, weight in items:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_STAGE_NAME:
            raise RegistryError(f"job kind {kind!r}: a stage name must be 1 to 40 characters")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise RegistryError(f"job kind {kind!r}: stage {name!r}: weight must be a number")
        if not (math.isfinite(weight) and weight > 0):
            raise RegistryError(f"job kind {kind!r}: stage {name!r}: weight must be positive")
    if len(set(names)) != len(names):
        raise RegistryError(f"job kind {kind!r}: two stages share a name")
    return tuple((name, float(weight)) for name, weight in items)


def _checked_params(kind: str, params: Any) -> type[pydantic.BaseModel]:
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise RegistryError(f"job kind {kind!r}: must match {KIND_RE.pattern}")
    if not (isinstance(params, type) and issubclass(params, pydantic.BaseModel)):
        raise RegistryError(f"job kind {kind!r}: params= must be a pydantic model class")
    if params.model_config.get("extra") == "forbid":
        return params
    # Unknown params are a 400, always.
    return type(
        params.__name__,
        (params,),
        {
            "__module__": params.__module__,
            "__doc__": params.__doc__,
            "model_config": pydantic.ConfigDict(**params.model_config, extra="forbid"),
        },
    )


def _register(kind: str, func: JobFunc, **declared: Any) -> None:
    if kind in JOBS and JOBS[kind].func is not func:
        where = getattr(JOBS[kind].func, "__module__", "?")
        raise RegistryError(f"job kind {kind!r} is registered twice (first in {where})")
    title = declared.pop("title") or kind.replace("_", " ").capitalize()
    JOBS[kind] = Job(kind, func, title=title, **declared)


def job(
    kind: str,
    *,
    params: type[pydantic.BaseModel] | None = None,
    title: str | None = None,
    description: str = "",
    units: str = "steps",
    summary: Callable[[Any], str] | None = None,
    stages: Mapping[str, float] | Sequence[tuple[str, float]] | None = None,
    listed: bool = True,
) -> Callable[[JobFunc], JobFunc]:
    """Register the decorated function as the job kind ``kind``.

    :param params: a pydantic model: the one declaration of the parameters.
                   The function is called with a validated instance of it.
    :param title: the page's name for the kind (default: ``kind`` capitalised).
    :param description: one line the page shows above the kind's form.
    :param units: what progress counts (``progress.update(done, total)``), e.g. ``rows``.
    :param summary: ``summary(result) -> str``, the message of the finished task
                    (default: "Done").
    :param stages: ``{name: weight}`` in order, e.g. ``{"Query": 10, "Render": 80,
                   "Upload": 10}``: the job calls ``progress.stage(name)`` as it enters
                   each, its reports count within it, and the bar is the weighted whole.
    :param listed: False for a kind that only runs as a workflow's child: the page
                   and ``POST /api/tasks`` do not offer it.
    """
    params = _checked_params(kind, params)
    checked = _stages(kind, stages)

    def register(func: JobFunc) -> JobFunc:
        _register(
            kind,
            func,
            params=params,
            title=title,
            description=description,
            units=units,
            summary=summary,
            stages=checked,
            listed=listed,
        )
        return func

    return register


def workflow(
    kind: str,
    *,
    params: type[pydantic.BaseModel] | None = None,
    title: str | None = None,
    description: str = "",
    units: str = "children",
    fan_in: Callable[[Any, list[Any]], Any] | None = None,
    stages: Mapping[str, float] | Sequence[tuple[str, float]] | None = None,
    summary: Callable[[Any], str] | None = None,
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register the decorated function as the plan of the workflow kind ``kind``.

    The plan gets the validated params and returns the children: a list of
    :class:`~taskbeam.workflows.Child` (or a :class:`~taskbeam.workflows.Group`, to
    allow failures). It runs when the task
    is created, so it must be quick and pure; a bad plan is the API's 400 and
    nothing starts. The children run in parallel on any workers, each a task with
    its own history; the parent's bar is their weighted roll-up.

    :param fan_in: ``fan_in(params, results)``, run on a worker once every child
                   has finished, with their results in the plan's order (None for
                   a failed child when failures are allowed); its return value is
                   the workflow's result. Without it the result counts the children.
    :param stages: two stages, ``{children's stage: weight, fan-in's stage: weight}``
                   (default ``{"Children": 90, "Finishing": 10}``), or one without a
                   fan-in (default ``{"Children": 100}``).
    """
    params = _checked_params(kind, params)
    default = {"Children": 90, "Finishing": 10} if fan_in else {"Children": 100}
    checked = _stages(kind, stages if stages is not None else default)
    if len(checked) != (2 if fan_in else 1):
        raise RegistryError(
            f"workflow {kind!r}: stages= names {'two (children, fan-in)' if fan_in else 'one'}"
        )
    if fan_in is not None and not callable(fan_in):
        raise RegistryError(f"workflow {kind!r}: fan_in= must be a function")

    def register(plan: Callable[[Any], Any]) -> Callable[[Any], Any]:
        _register(
            kind,
            plan,
            params=params,
            title=title,
            description=description,
            units=units,
            summary=summary,
            stages=checked,
            plan=plan,
            fan_in=fan_in,
        )
        return plan

    return register


def get(kind: object, *, listed: bool = False) -> Job:
    """The registered kind; raises :class:`UnknownKind` (``listed``: also for a kind
    that only runs as a child)."""
    found = JOBS.get(kind) if isinstance(kind, str) else None
    if found is None or (listed and not found.listed):
        raise UnknownKind(kind)
    return found


def _module_names(path: str) -> Iterable[str]:
    """``path`` and, if it is a package, every module below it (not ``_private``
    ones nor tests: ``test_*`` modules, ``tests`` packages)."""
    module = importlib.import_module(path)
    yield path
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{path}."):
        leaf = info.name.rsplit(".", 1)[1]
        if leaf.startswith(("_", "test_")) or leaf in ("tests", "conftest"):
            continue
        if any(part in ("tests",) or part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        yield info.name


def load_modules(paths: Iterable[str]) -> list[str]:
    """Import the shipped kinds and every module of ``paths`` (``JOBS_MODULES``);
    the modules imported.

    All or nothing: a module that fails to import, or a kind it cannot register,
    leaves :data:`JOBS` as it was and raises :class:`RegistryError` naming the module.
    """
    before = dict(JOBS)
    loaded: list[str] = []
    paths = [SHIPPED, *paths]
    current = "?"
    try:
        for path in paths:
            current = path
            for name in _module_names(path):
                current = name
                importlib.import_module(name)
                loaded.append(name)
    except RegistryError as exc:
        JOBS.clear()
        JOBS.update(before)
        raise RegistryError(f"JOBS_MODULES: {current}: {exc}") from exc
    except Exception as exc:
        JOBS.clear()
        JOBS.update(before)
        raise RegistryError(
            f"JOBS_MODULES: {current} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    return loaded


def load_or_exit(paths: Iterable[str]) -> list[str]:
    """:func:`load_modules` for process start-up: a problem ends the process with
    one line naming the module and what is wrong."""
    try:
        return load_modules(paths)
    except RegistryError as exc:
        sys.stderr.write(f"taskbeam: {exc}\n")
        raise SystemExit(2) from None
