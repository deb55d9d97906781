"""The job kinds Taskbeam ships: the demos ``simulate`` and ``primes`` (a workflow)
here, ``export`` in export.py.

Importing this module registers both in :data:`JOBS` (the worker and the web app
do). A team's own kinds live outside the package, in the modules ``JOBS_MODULES``
names (docs/jobs.md); the registry is :mod:`taskbeam.registry`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import export, progress  # noqa: F401  (export registers the `export` kind)
from .registry import JOBS, Job, ParamError, job, workflow
from .workflows import Child, Group

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


# --- a workflow: count primes below a limit, one shard per child -------------------


class ShardParams(BaseModel):
    """The numbers ``start`` <= n < ``stop``; ``fail`` makes the shard fail (demo)."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(ge=0, le=100_000_000)
    stop: int = Field(ge=0, le=100_000_000)
    slow_ms: int = Field(0, ge=0, le=5_000)
    fail: bool = False


class PrimesParams(BaseModel):
    """Counts the primes below ``limit`` in ``shards`` child tasks, then sums them."""

    model_config = ConfigDict(extra="forbid", title="Count primes")

    limit: int = Field(
        2_000_000, ge=1_000, le=100_000_000, title="Below", description="Count primes below this."
    )
    shards: int = Field(
        20, ge=1, le=1_000, title="Shards", description="Child tasks to split into."
    )
    slow_ms: int = Field(
        200, ge=0, le=5_000, title="Pause (ms)", description="A pause per report, to watch it."
    )
    fail_shard: int | None = Field(
        None, ge=0, le=999, title="Fail shard", description="Make this shard fail (0-based)."
    )
    allow_failures: bool = Field(
        False, title="Allow failures", description="A failed shard counts as none."
    )


def _primes_in(start: int, stop: int) -> int:
    """How many primes p with start <= p < stop (a segmented sieve)."""
    start = max(start, 2)
    if stop <= start:
        return 0
    root = math.isqrt(stop - 1)
    base = bytearray([1]) * (root + 1)
    base[:2] = b"\0\0"
    for i in range(2, math.isqrt(root) + 1):
        if base[i]:
            base[i * i :: i] = bytes(len(range(i * i, root + 1, i)))
    segment = bytearray([1]) * (stop - start)
    for p in (i for i, is_prime in enumerate(base) if is_prime):
        first = max(p * p, (start + p - 1) // p * p)
        segment[first - start :: p] = bytes(len(range(first, stop, p)))
    return sum(segment)


@job(
    "count_primes", params=ShardParams, title="Count primes (shard)", units="numbers", listed=False
)
def count_primes(
    params: ShardParams, sleep: Callable[[float], object] = time.sleep
) -> dict[str, int]:
    """One shard of ``primes``: counts in ten slices, reporting after each."""
    size = max(params.stop - params.start, 0)
    found = 0
    for i in range(10):
        a, b = params.start + size * i // 10, params.start + size * (i + 1) // 10
        found += _primes_in(a, b)
        sleep(params.slow_ms / 1000)
        if params.fail and i == 4:
            raise progress.JobError(
                "shard_failed", f"Shard {params.start}..{params.stop} failed (demo)"
            )
        progress.update(b - params.start, size, f"{found} primes so far")
    return {"primes": found, "start": params.start, "stop": params.stop}


def _sum_primes(params: PrimesParams, results: list[dict[str, int] | None]) -> dict[str, int]:
    counted = [r for r in results if r is not None]
    progress.update(len(counted), len(results), "Summing")
    return {
        "primes": sum(r["primes"] for r in counted),
        "shards": len(results),
        "failed": len(results) - len(counted),
    }


@workflow(
    "primes",
    params=PrimesParams,
    title="Count primes",
    description="A workflow: shards counted in parallel on every worker, then summed.",
    units="shards",
    fan_in=_sum_primes,
    stages={"Counting": 90, "Summing": 10},
    summary=lambda result: f"{result['primes']} primes",
)
def primes(params: PrimesParams) -> Group:
    """One child per shard, weighted by its size."""
    bounds = [params.limit * i // params.shards for i in range(params.shards + 1)]
    children = [
        Child(
            "count_primes",
            {"start": a, "stop": b, "slow_ms": params.slow_ms, "fail": i == params.fail_shard},
            weight=max(b - a, 1),
        )
        for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
    ]
    return Group(children, allow_failures=params.allow_failures)
