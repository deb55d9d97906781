"""The job registry: what a job kind is, how it is registered, and the helpers its
parameter validation uses.

It imports nothing of the job kinds themselves, so a kind's module (``jobs.py``,
``export.py``, your own) imports this and is registered by being imported;
``taskbeam.jobs`` imports every shipped kind.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .config import Settings

Params = dict[str, Any]
#: ``func(clean params) -> JSON-able result``.
JobFunc = Callable[[Params], Any]


class Validator(Protocol):
    """``validate(params, settings=None) -> clean params``; raises :class:`ParamError`.

    The web app passes its settings; the worker validates again without them.
    """

    def __call__(self, params: Any, settings: Settings | None = None, /) -> Params: ...


class ParamError(ValueError):
    """Bad job parameters; ``field`` names the offending one."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Job:
    """A registered job kind: its function and its parameter validation."""

    def __init__(self, kind: str, func: JobFunc, validate: Validator) -> None:
        self.kind = kind
        self.func = func
        self.validate = validate

    @property
    def celery_name(self) -> str:
        return f"taskbeam.{self.kind}"


JOBS: dict[str, Job] = {}


def job(kind: str, *, validate: Validator) -> Callable[[JobFunc], JobFunc]:
    """Register the decorated function as the job kind ``kind``.

    ``validate(params, settings=None)`` returns the clean params or raises
    :class:`ParamError`; ``settings`` is a :class:`taskbeam.config.Settings` or None
    (then read :func:`taskbeam.config.current` if you need them).
    """

    def register(func: JobFunc) -> JobFunc:
        JOBS[kind] = Job(kind, func, validate)
        return func

    return register


def check_fields(params: object, allowed: Collection[str]) -> None:
    """Raise :class:`ParamError` unless ``params`` is a dict with only ``allowed`` keys."""
    if not isinstance(params, dict):
        raise ParamError("params", "must be a JSON object")
    for name in params:
        if name not in allowed:
            raise ParamError(name, f"unknown parameter (allowed: {', '.join(sorted(allowed))})")


def integer(
    params: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None
) -> int:
    """``params[name]`` as an int in ``low..high``; ``default`` when absent (None = required)."""
    if name not in params:
        if default is None:
            raise ParamError(name, "is required")
        return default
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParamError(name, f"must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise ParamError(name, f"must be from {low} to {high}, got {value}")
    return int(value)
