"""The job kinds Taskbeam ships: the demo ``simulate`` here, ``export`` in export.py.

Importing this module registers both in :data:`JOBS` (the worker and the web app
do). A team's own kinds live outside the package, in the modules ``JOBS_MODULES``
names (docs/jobs.md); the registry is :mod:`taskbeam.registry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import export, progress  # noqa: F401  (export registers the `export` kind)
from .registry import JOBS, Job, ParamError, job

__all__ = ["JOBS", "Job", "ParamError", "SimulateParams", "simulate", "MAX_SIMULATE_MS"]

# One simulation may take at most this long in all (steps × step_ms): a client
# cannot park a worker slot for hours. Fixed rather than TASK_TIME_LIMIT_S, so the
# time-limit failure stays reachable with a simulation.
MAX_SIMULATE_MS = 10 * 60 * 1000


class SimulateParams(BaseModel):
    """Does ``steps`` steps of ``step_ms`` each; fails at step ``fail_at`` if set."""

    model_config = ConfigDict(extra="forbid", title="Simulation")

    steps: int = Field(20, ge=1, le=10_000, title="Steps", description="How many steps.")
    step_ms: int = Field(
        250, ge=0, le=60_000, title="Step (ms)", description="Milliseconds per step."
    )
    fail_at: int | None = Field(None, ge=1, le=10_000, description="Fail at this step (1..steps).")

    @model_validator(mode="after")
    def _bounded(self) -> SimulateParams:
        if self.steps * self.step_ms > MAX_SIMULATE_MS:
            raise ParamError(
                "step_ms",
                f"steps × step_ms must be at most {MAX_SIMULATE_MS} ms "
                f"(10 minutes), got {self.steps * self.step_ms} ms",
            )
        if self.fail_at is not None and self.fail_at > self.steps:
            raise ParamError("fail_at", f"must be from 1 to {self.steps}, got {self.fail_at}")
        return self


@job(
    "simulate",
    params=SimulateParams,
    title="Simulation",
    description="A job that only sleeps and reports: watch the bar move.",
    units="steps",
    summary=lambda result: f"Done: {result['steps']} steps",
)
def simulate(
    params: SimulateParams, sleep: Callable[[float], object] = time.sleep
) -> dict[str, int]:
    """Do ``steps`` steps of ``step_ms`` each, reporting after every step."""
    for step in range(1, params.steps + 1):
        sleep(params.step_ms / 1000)
        if step == params.fail_at:
            raise progress.JobError("simulated_failure", f"Simulated failure at step {step}")
        progress.update(step, params.steps, f"Step {step} of {params.steps}")
    return {"steps": params.steps}
