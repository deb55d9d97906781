"""Unit tests for the simulate job kind and its parameter validation."""

import pytest

from taskbeam import jobs, progress, registry


def simulate_params(params):
    """The clean params the API stores for ``params`` (raises ParamError)."""
    return jobs.JOBS["simulate"].validate(params)


def test_simulate_is_registered():
    assert jobs.JOBS["simulate"].celery_name == "taskbeam.simulate"


def test_simulate_params_defaults():
    assert simulate_params({}) == {"steps": 20, "step_ms": 250}


def test_simulate_params_keeps_valid_values():
    clean = simulate_params({"steps": 5, "step_ms": 0, "fail_at": 5})
    assert clean == {"steps": 5, "step_ms": 0, "fail_at": 5}


def test_fail_at_none_is_absent():
    assert "fail_at" not in simulate_params({"fail_at": None})


@pytest.mark.parametrize("value", [True, 5.0, "5", None, [5]])
def test_steps_must_be_an_integer(value):
    with pytest.raises(jobs.ParamError) as exc_info:
        simulate_params({"steps": value})
    assert exc_info.value.field == "steps"


@pytest.mark.parametrize(
    "params, field",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 10_001}, "steps"),
        ({"step_ms": -1}, "step_ms"),
        ({"step_ms": 60_001}, "step_ms"),
        ({"fail_at": 0}, "fail_at"),
    ],
)
def test_out_of_range(params, field):
    with pytest.raises(jobs.ParamError) as exc_info:
        simulate_params(params)
    assert exc_info.value.field == field


def test_fail_at_must_not_exceed_steps():
    with pytest.raises(jobs.ParamError) as exc_info:
        simulate_params({"steps": 3, "fail_at": 4})
    assert exc_info.value.field == "fail_at"


def test_unknown_field_is_named():
    with pytest.raises(jobs.ParamError) as exc_info:
        simulate_params({"steps": 3, "colour": "red"})
    assert exc_info.value.field == "colour"
    assert "colour" in str(exc_info.value)


@pytest.mark.parametrize("params", [[], "steps=3", None, 3])
def test_params_must_be_an_object(params):
    with pytest.raises(jobs.ParamError) as exc_info:
        simulate_params(params)
    assert exc_info.value.field == "params"


def run_simulate(params):
    updates, sleeps = [], []
    with progress.reporting_to(lambda *args: updates.append(args)):
        try:
            result = jobs.simulate(jobs.JOBS["simulate"].load(params), sleep=sleeps.append)
        except progress.JobError as exc:
            result = exc
    return result, updates, sleeps


def test_simulate_reports_every_step():
    result, updates, sleeps = run_simulate({"steps": 3, "step_ms": 250})
    assert result == {"steps": 3}
    assert [(d, t) for d, t, _ in updates] == [(1, 3), (2, 3), (3, 3)]
    assert updates[-1][2] == "Step 3 of 3"
    assert sleeps == [0.25, 0.25, 0.25]


def test_simulate_fails_at_requested_step():
    error, updates, _ = run_simulate({"steps": 5, "step_ms": 0, "fail_at": 3})
    assert isinstance(error, progress.JobError)
    assert error.code == "simulated_failure"
    assert "3" in error.message
    assert [d for d, _, _ in updates] == [1, 2]


# The cap on one simulation's total duration (issue 15: bound what a client can grow).
def test_simulate_total_duration_capped():
    with pytest.raises(jobs.ParamError) as exc_info:
        simulate_params({"steps": 10_000, "step_ms": 60_000})
    assert exc_info.value.field == "step_ms"
    assert "600000 ms" in exc_info.value.reason


def test_simulate_at_the_cap_is_accepted():
    assert simulate_params({"steps": 600, "step_ms": 1000}) == {"steps": 600, "step_ms": 1000}
    with pytest.raises(jobs.ParamError):
        simulate_params({"steps": 601, "step_ms": 1000})


def test_registry_is_importable_without_the_job_kinds():
    """The registry imports no kind, so a kind's module can import it without a cycle."""
    import subprocess
    import sys

    code = (
        "import sys, taskbeam.registry as r; "
        "assert 'taskbeam.jobs' not in sys.modules and 'taskbeam.export' not in sys.modules; "
        "import taskbeam.export; assert 'export' in r.JOBS; "
        "assert 'taskbeam.jobs' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_jobs_registers_every_shipped_kind():
    assert {"simulate", "export"} <= set(jobs.JOBS)
    assert jobs.ParamError is registry.ParamError and jobs.JOBS is registry.JOBS


def test_docs_example_job_is_the_shipped_one():
    """docs/jobs.md shows jobs/countdown.py as it is, and it is one file of at most 30 lines."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shipped = (root / "jobs" / "countdown.py").read_text()
    doc = (root / "docs" / "jobs.md").read_text()
    shown = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert shown == shipped
    assert len(shipped.splitlines()) <= 30


def test_readme_add_your_own_job_example_runs():
    """The README's example registers, validates as the API does and reports progress."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Add your own job", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    before = dict(registry.JOBS)
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
        (kind,) = set(registry.JOBS) - set(before)
        job = registry.JOBS[kind]
        assert job.validate({}) == {"width": 800}
        with pytest.raises(registry.ParamError, match="width"):
            job.validate({"width": 5})
        updates = []
        with progress.reporting_to(lambda *args: updates.append(args)):
            job.func(job.load({"width": 640}))
        assert updates[-1][:2] == (10, 10)
        assert job.schema()["properties"]["width"]["maximum"] == 4096
    finally:
        registry.JOBS.clear()
        registry.JOBS.update(before)
