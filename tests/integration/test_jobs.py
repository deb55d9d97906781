"""A team's own job kind on the stack: ``countdown``, from jobs/countdown.py, a module
outside the package that web and worker import through JOBS_MODULES (default ``jobs``).

Created over REST it runs end to end; its OpenAPI entry is generated; each field
type's bad values get 400 ``invalid_params`` naming the field and create nothing; a
jobs module that fails to import stops web and worker with one line naming it.
"""

import os
import subprocess

import pytest
from conftest import assert_gapless_single_terminal

START_TIMEOUT_S = 60


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error["message"]


def test_countdown_runs_end_to_end_over_rest(api, watcher):
    params = {"start": 5, "pause_s": 0.25, "word": "go", "shout": True}
    response = api.post_task({"kind": "countdown", "params": params})
    assert response.status_code == 202, response.text
    task = response.json()
    assert task["kind"] == "countdown" and task["state"] == "queued"
    watcher.follow(task["id"])
    watcher.wait_terminal([task["id"]], timeout=60)

    history = watcher.history(task["id"])
    assert_gapless_single_terminal(history)
    # Its progress messages, counting down (PROGRESS_COALESCE_MS may merge some).
    counted = [e["message"] for e in history if e["state"] == "running" and e["progress"] > 0]
    assert counted and counted[0] == "5...", counted
    assert all(m in {"5...", "4...", "3...", "2...", "1..."} for m in counted), counted
    assert counted == sorted(counted, reverse=True), counted
    assert history[-1]["message"] == "GO"  # the kind's summary of its result
    snap = api.snapshot(task["id"])
    assert snap["state"] == "succeeded" and snap["message"] == "GO"
    assert snap["result"] == {"counted": 5, "said": "GO"}


def test_countdown_is_listed_with_its_declaration(api):
    kinds = {k["kind"]: k for k in api.request("GET", "/api/kinds").json()["kinds"]}
    countdown = kinds["countdown"]
    assert countdown["units"] == "numbers"
    assert countdown["description"] == "Counts down, then says the word."
    props = countdown["schema"]["properties"]
    assert props["start"]["type"] == "integer"
    assert (props["start"]["minimum"], props["start"]["maximum"]) == (1, 1000)
    assert props["word"]["maxLength"] == 40 and props["shout"]["type"] == "boolean"


def test_every_kind_is_in_the_openapi_create_variants(api):
    kinds = [k["kind"] for k in api.request("GET", "/api/kinds").json()["kinds"]]
    assert {"countdown", "export", "simulate"} <= set(kinds)
    doc = api.request("GET", "/api/openapi.json").json()
    body = doc["paths"]["/api/tasks"]["post"]["requestBody"]["content"]["application/json"]
    variants = {v["properties"]["kind"]["enum"][0]: v for v in body["schema"]["oneOf"]}
    assert sorted(variants) == sorted(kinds)
    countdown = variants["countdown"]["properties"]["params"]
    assert set(countdown["properties"]) == {"start", "pause_s", "word", "shout"}
    assert countdown["additionalProperties"] is False


@pytest.mark.parametrize(
    "kind, params, field",
    [
        # integer: bounds, a fraction, a string, a boolean, null
        ("countdown", {"start": 0}, "params.start"),
        ("countdown", {"start": 1001}, "params.start"),
        ("countdown", {"start": 2.5}, "params.start"),
        ("countdown", {"start": "5"}, "params.start"),
        ("countdown", {"start": True}, "params.start"),
        ("countdown", {"start": None}, "params.start"),
        # number: bounds, a string
        ("countdown", {"pause_s": -0.1}, "params.pause_s"),
        ("countdown", {"pause_s": 5.5}, "params.pause_s"),
        ("countdown", {"pause_s": "0.1"}, "params.pause_s"),
        # string: length, a number
        ("countdown", {"word": ""}, "params.word"),
        ("countdown", {"word": "x" * 41}, "params.word"),
        ("countdown", {"word": 7}, "params.word"),
        # boolean: a string, a number
        ("countdown", {"shout": "yes"}, "params.shout"),
        ("countdown", {"shout": 1}, "params.shout"),
        # an unknown field; params of the wrong JSON type
        ("countdown", {"colour": "red"}, "params.colour"),
        ("countdown", [5], "params"),
        ("countdown", "start=5", "params"),
        # date: not a day, not ISO, a number
        ("export", {"date_from": "2025-02-30"}, "params.date_from"),
        ("export", {"date_from": "01/02/2025"}, "params.date_from"),
        ("export", {"date_to": 20250101}, "params.date_to"),
        # enum: not one of them, a number
        ("export", {"format": "xlsx"}, "params.format"),
        ("export", {"format": 1}, "params.format"),
        # array: empty, a string, an item of the wrong type, an unknown item
        ("export", {"columns": []}, "params.columns"),
        ("export", {"columns": "id"}, "params.columns"),
        ("export", {"columns": ["id", 5]}, "params.columns"),
        ("export", {"columns": ["id", "password"]}, "params.columns"),
    ],
)
def test_bad_params_get_400_naming_the_field_and_create_nothing(api, kind, params, field):
    before = api.request("GET", "/api/tasks").json()
    response = api.post_task({"kind": kind, "params": params})
    message = assert_error(response, 400, "invalid_params")
    assert message.startswith(f"{field}:") or message.startswith(f"{field}."), message
    assert api.request("GET", "/api/tasks").json() == before == {"tasks": []}


def run_refusing(service, command):
    """``command`` in a one-off ``service`` container with a jobs module that does not
    exist; its exit status and output. Bounded: a process that keeps running (e.g. a
    server respawning what fails) fails the test, and its container is removed."""
    name = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'taskbeam-test')}-refusal-{service}"
    argv = ["docker", "compose", "run", "--rm", "--no-deps", "-T", "--name", name]
    argv += ["-e", "JOBS_MODULES=jobs,no_such_jobs_module", "-e", "DEMO_DATA=0"]
    try:
        done = subprocess.run(
            [*argv, service, command], capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        raise AssertionError(
            f"{service} still running after {START_TIMEOUT_S} s:\n{output[-3000:]}"
        ) from None
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    "service, command", [("web", "/app/web/start.sh"), ("worker", "/app/worker/start.sh")]
)
def test_a_jobs_module_that_fails_to_import_stops_start_up(service, command):
    status, output = run_refusing(service, command)
    assert status != 0, output
    refusals = [line for line in output.splitlines() if "JOBS_MODULES:" in line]
    assert refusals, output
    assert refusals[0].startswith(
        "taskbeam: JOBS_MODULES: no_such_jobs_module failed to import: ModuleNotFoundError"
    ), refusals
    assert "Traceback" not in output, output
