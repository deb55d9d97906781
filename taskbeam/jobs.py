"""The job kinds users can start, with their parameter validation.

To add your own kind: write a function that takes the validated params dict,
calls :func:`taskbeam.progress.update` as it goes and returns a JSON-able result;
register it with ``@job("kind", validate=...)``, where ``validate(params,
settings=None)`` returns clean params or raises :class:`ParamError`. The worker
runs it as a Celery task and emits every state change itself.
"""
import numbers
import time

from . import progress


class ParamError(ValueError):
    """Bad job parameters; ``field`` names the offending one."""

    def __init__(self, field, reason):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Job:
    def __init__(self, kind, func, validate):
        self.kind = kind
        self.func = func
        self.validate = validate

    @property
    def celery_name(self):
        return f"taskbeam.{self.kind}"


JOBS = {}


def job(kind, *, validate):
    """Register ``func`` as the job kind ``kind``; ``validate(params) -> params``."""

    def register(func):
        JOBS[kind] = Job(kind, func, validate)
        return func

    return register


def check_fields(params, allowed):
    if not isinstance(params, dict):
        raise ParamError("params", "must be a JSON object")
    for name in params:
        if name not in allowed:
            raise ParamError(name, f"unknown parameter (allowed: {', '.join(sorted(allowed))})")


def integer(params, name, low, high, default=None):
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


def simulate_params(params, settings=None):
    check_fields(params, {"steps", "step_ms", "fail_at"})
    steps = integer(params, "steps", 1, 10_000, default=20)
    step_ms = integer(params, "step_ms", 0, 60_000, default=250)
    clean = {"steps": steps, "step_ms": step_ms}
    if params.get("fail_at") is not None:
        clean["fail_at"] = integer(params, "fail_at", 1, steps)
    return clean


@job("simulate", validate=simulate_params)
def simulate(params, sleep=time.sleep):
    """Do ``steps`` steps of ``step_ms`` each, reporting after every step."""
    steps, fail_at = params["steps"], params.get("fail_at")
    for step in range(1, steps + 1):
        sleep(params["step_ms"] / 1000)
        if step == fail_at:
            raise progress.JobError("simulated_failure", f"Simulated failure at step {step}")
        progress.update(step, steps, f"Step {step} of {steps}")
    return {"steps": steps}


# Registers the `export` kind; imported last because it builds on the helpers above.
from . import export  # noqa: E402,F401
