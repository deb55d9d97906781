"""LOG_FORMAT=json lines and the ids they carry (taskbeam/observability.py)."""

import io
import json
import logging

import pytest
from flask import Flask

from taskbeam import config, observability
from taskbeam.web import front


@pytest.fixture
def json_log():
    """A logger writing JSON lines to a buffer; the buffer."""
    observability.clear()
    out = io.StringIO()
    logger = logging.getLogger("taskbeam.test_observability")
    logger.propagate = False
    logger.handlers = [observability.handler("json", out)]
    logger.setLevel(logging.INFO)
    yield logger, out
    logger.handlers = []
    observability.clear()


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_carries_the_bound_ids(json_log):
    logger, out = json_log
    owner = observability.owner_hash("u-secret-owner")
    with observability.bound(request_id="abc123", task_id="t1", run=2, owner=owner):
        logger.info("task %s ran", "t1")
    logger.info("outside")
    inside, outside = lines(out)
    assert inside["message"] == "task t1 ran"
    assert inside["level"] == "INFO" and inside["logger"] == logger.name and inside["time"]
    assert (inside["request_id"], inside["task_id"], inside["run"]) == ("abc123", "t1", "2")
    assert inside["owner"] == owner and "u-secret-owner" not in out.getvalue()
    assert not {"request_id", "task_id", "run", "owner"} & set(outside)


def test_celerys_own_task_lines_name_their_task(json_log):
    logger, out = json_log
    logger.info("Task %(name)s[%(id)s] received", {"name": "taskbeam.simulate", "id": "t9"})
    assert lines(out)[0]["task_id"] == "t9"


def test_a_request_id_is_kept_only_if_plausible():
    assert observability.request_id("0123abcd" * 4) == "0123abcd" * 4
    for bad in (None, "", "a" * 65, 'x"}{', "new\nline"):
        made = observability.request_id(bad)
        assert made != bad and len(made) == 32


def test_the_ids_travel_in_the_task_headers_and_back():
    with observability.bound(request_id="r1", owner=observability.owner_hash("o"), task_id="x"):
        headers = observability.task_headers()
    assert set(headers) == {"taskbeam_request_id", "taskbeam_owner"}
    assert observability.from_headers(headers) == {
        "request_id": "r1",
        "owner": observability.owner_hash("o"),
    }
    assert observability.from_headers({"taskbeam_request_id": "bad id!"}) == {}


def test_health_check_access_lines_are_dropped():
    keep = observability.HealthCheckFilter()

    def record(*args):
        return logging.LogRecord("tornado.access", 20, "", 0, "%d %s %.2fms", args, None)

    assert not keep.filter(record(200, "GET /flower/healthcheck (127.0.0.1)", 1.0))
    assert keep.filter(record(200, "GET /flower/tasks (127.0.0.1)", 1.0))


def app_with_ids(trusted):
    app = Flask(__name__)
    app.config["TASKBEAM_TRUST_REQUEST_ID"] = trusted
    front.request_ids(app)
    app.get("/id")(lambda: observability.current())
    return app


def test_the_web_believes_x_request_id_only_from_its_proxy():
    rid = "f" * 32
    answer = app_with_ids(True).test_client().get("/id", headers={"X-Request-ID": rid})
    assert answer.json == {"request_id": rid} and answer.headers["X-Request-ID"] == rid
    answer = app_with_ids(False).test_client().get("/id", headers={"X-Request-ID": rid})
    assert answer.json["request_id"] != rid
    assert answer.headers["X-Request-ID"] == answer.json["request_id"]
    assert observability.current() == {}  # nothing left for the greenlet's next request


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be text or json"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTLP/HTTP base URL"),
    ],
)
def test_bad_observability_settings_are_refused(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load({"REDIS_URL": "redis://r:6379/0", **env}, need_secret=False)


def test_observability_settings_default_to_text_and_no_traces():
    settings = config.load({"REDIS_URL": "redis://r:6379/0"}, need_secret=False)
    assert (settings.log_format, settings.otel_endpoint) == ("text", "")
    env = {"LOG_FORMAT": "JSON", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    settings = config.load({"REDIS_URL": "redis://r:6379/0", **env}, need_secret=False)
    assert (settings.log_format, settings.otel_endpoint) == ("json", "http://c:4318")
