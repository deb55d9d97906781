"""The job kinds users can start: the demo ``simulate`` here, ``export`` in export.py.

Importing this module registers every shipped kind in :data:`JOBS` (the worker and
the web app do). The registry itself, and the helpers for validation, live in
:mod:`taskbeam.registry`; they are re-exported here, so ``jobs.JOBS`` and
``jobs.ParamError`` are the registry's.

To add your own kind: write a function that takes the validated params dict,
calls :func:`taskbeam.progress.update` as it goes and returns a JSON-able result;
register it with ``@job("kind", validate=...)``, where ``validate(params,
settings=None)`` returns clean params or raises :class:`ParamError`. The worker
runs it as a Celery task and emits every state change itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import export, progress  # noqa: F401  (export registers the `export` kind)
from .config import Settings
from .registry import JOBS, Job, ParamError, Params, check_fields, integer, job

__all__ = [
    "JOBS",
    "Job",
    "ParamError",
    "check_fields",
    "integer",
    "job",
    "simulate",
    "simulate_params",
    "MAX_SIMULATE_MS",
]

# One simulation may take at most this long in all (steps × step_ms): a client
# cannot park a worker slot for hours. Fixed rather than TASK_TIME_LIMIT_S, so the
# time-limit failure stays reachable with a simulation.
MAX_SIMULATE_MS = 10 * 60 * 1000


def simulate_params(params: Any, settings: Settings | None = None) -> Params:
    check_fields(params, {"steps", "step_ms", "fail_at"})
    steps = integer(params, "steps", 1, 10_000, default=20)
    step_ms = integer(params, "step_ms", 0, 60_000, default=250)
    if steps * step_ms > MAX_SIMULATE_MS:
        raise ParamError(
            "step_ms",
            f"steps × step_ms must be at most {MAX_SIMULATE_MS} ms "
            f"(10 minutes), got {steps * step_ms} ms",
        )
    clean = {"steps": steps, "step_ms": step_ms}
    if params.get("fail_at") is not None:
        clean["fail_at"] = integer(params, "fail_at", 1, steps)
    return clean


@job("simulate", validate=simulate_params)
def simulate(params: Params, sleep: Callable[[float], object] = time.sleep) -> dict[str, int]:
    """Do ``steps`` steps of ``step_ms`` each, reporting after every step."""
    steps, fail_at = params["steps"], params.get("fail_at")
    for step in range(1, steps + 1):
        sleep(params["step_ms"] / 1000)
        if step == fail_at:
            raise progress.JobError("simulated_failure", f"Simulated failure at step {step}")
        progress.update(step, steps, f"Step {step} of {steps}")
    return {"steps": steps}
