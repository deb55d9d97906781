"""The job registry: declarations, strict validation, and loading JOBS_MODULES."""

import sys
import textwrap

import pytest
from pydantic import BaseModel, Field

from taskbeam import config, jobs, registry  # noqa: F401  (jobs: the shipped kinds)


class Params(BaseModel):
    count: int = Field(3, ge=1, le=10)


@pytest.fixture
def clean_registry():
    before = dict(registry.JOBS)
    yield
    registry.JOBS.clear()
    registry.JOBS.update(before)


@pytest.fixture
def jobs_dir(tmp_path, monkeypatch):
    """A folder on sys.path for throwaway job packages."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("teamjobs")]:
        del sys.modules[name]


def write(root, path, text):
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(text))


KIND = """
from pydantic import BaseModel
import taskbeam

class P(BaseModel):
    n: int = 1

@taskbeam.job("{kind}", params=P)
def run(params):
    return {{}}
"""


def test_a_kind_needs_a_params_model(clean_registry):
    with pytest.raises(registry.RegistryError, match="pydantic model"):
        registry.job("nomodel")
    with pytest.raises(registry.RegistryError, match="must match"):
        registry.job("Bad Kind", params=Params)


def test_two_kinds_with_one_name_are_refused(clean_registry):
    registry.job("twice", params=Params)(lambda p: {})
    with pytest.raises(registry.RegistryError, match="registered twice"):
        registry.job("twice", params=Params)(lambda p: {})


def test_unknown_params_are_refused_even_if_the_model_allows_them(clean_registry):
    registry.job("lenient", params=Params)(lambda p: {})
    with pytest.raises(registry.ParamError) as caught:
        registry.get("lenient").validate({"colour": "red"})
    assert caught.value.field == "colour"


@pytest.mark.parametrize("value", ["3", 3.0, True, None, [3], {"n": 3}])
def test_validation_is_strict_as_json(clean_registry, value):
    registry.job("strict", params=Params)(lambda p: {})
    with pytest.raises(registry.ParamError) as caught:
        registry.get("strict").validate({"count": value})
    assert caught.value.field == "count"


def test_params_that_are_not_json_values_are_a_param_error(clean_registry):
    registry.job("json", params=Params)(lambda p: {})
    with pytest.raises(registry.ParamError) as caught:
        registry.get("json").validate({"count": object()})
    assert caught.value.field == "params"
    with pytest.raises(registry.ParamError):
        registry.get("json").validate({"count": float("nan")})


def test_an_unknown_kind_says_which_exist():
    with pytest.raises(registry.UnknownKind, match="simulate"):
        registry.get("nope")
    with pytest.raises(registry.UnknownKind):
        registry.get(["simulate"])


def test_a_package_loads_every_module_but_tests_and_private_ones(jobs_dir, clean_registry):
    write(jobs_dir, "teamjobs/__init__.py", "")
    write(jobs_dir, "teamjobs/alpha.py", KIND.format(kind="alpha"))
    write(jobs_dir, "teamjobs/sub/__init__.py", "")
    write(jobs_dir, "teamjobs/sub/beta.py", KIND.format(kind="beta"))
    write(jobs_dir, "teamjobs/_helpers.py", "raise RuntimeError('not a job module')")
    write(jobs_dir, "teamjobs/tests/__init__.py", "")
    write(jobs_dir, "teamjobs/tests/test_alpha.py", "raise RuntimeError('a test')")
    loaded = registry.load_modules(["teamjobs"])
    assert set(loaded) == {
        "taskbeam.jobs",
        "teamjobs",
        "teamjobs.alpha",
        "teamjobs.sub",
        "teamjobs.sub.beta",
    }
    assert {"alpha", "beta"} <= set(registry.JOBS)


def test_a_failing_module_registers_nothing_and_is_named(jobs_dir, clean_registry):
    write(jobs_dir, "teamjobs/__init__.py", "")
    write(jobs_dir, "teamjobs/a_good.py", KIND.format(kind="good"))
    write(jobs_dir, "teamjobs/b_broken.py", "import not_a_module_anywhere\n")
    before = set(registry.JOBS)
    with pytest.raises(registry.RegistryError) as caught:
        registry.load_modules(["teamjobs"])
    assert "teamjobs.b_broken failed to import: ModuleNotFoundError" in str(caught.value)
    assert set(registry.JOBS) == before  # "good" did not stay half-registered


def test_a_duplicate_kind_across_modules_is_named(jobs_dir, clean_registry):
    write(jobs_dir, "teamjobs/__init__.py", "")
    write(jobs_dir, "teamjobs/one.py", KIND.format(kind="simulate"))
    with pytest.raises(registry.RegistryError, match="teamjobs.one: job kind 'simulate'"):
        registry.load_modules(["teamjobs"])


def test_start_up_stops_with_one_line(jobs_dir, clean_registry, capsys):
    with pytest.raises(SystemExit) as caught:
        registry.load_or_exit(["teamjobs_missing"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "taskbeam: JOBS_MODULES: teamjobs_missing failed to import: "
        "ModuleNotFoundError: No module named 'teamjobs_missing'"
    ]


def test_describe_gives_what_the_page_needs():
    settings = config.load({"REDIS_URL": "redis://r:6379/0"}, need_secret=False)
    described = registry.get("export").describe(settings)
    assert {"kind", "title", "description", "units", "schema"} <= set(described)
    assert described["units"] == "rows"
    assert described["schema"]["properties"]["columns"]["items"]["enum"]
