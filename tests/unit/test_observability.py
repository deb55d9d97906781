"""LOG_FORMAT=json lines and the ids they carry (taskbeam/observability.py)."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from taskbeam import config, observability
from taskbeam.web import front

ROOT = Path(__file__).resolve().parents[2]


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
    # gevent-websocket's handler, the web's: one line a request, formatted already.
    line = '127.0.0.1 - - [2026-12-06 19:34:47] "GET /readyz HTTP/1.0" 200 396 0.003999'
    assert not keep.filter(logging.LogRecord("g", 20, "", 0, line, None, None))
    assert keep.filter(
        logging.LogRecord("g", 20, "", 0, line.replace("readyz", "api/x"), None, None)
    )
    observability.drop_health_checks()
    web_access = logging.getLogger("geventwebsocket.handler")
    assert sum(isinstance(f, observability.HealthCheckFilter) for f in web_access.filters) == 1


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


def test_with_tracing_off_nothing_of_opentelemetry_is_imported():
    # Of ours: redis-py imports the SDK's metrics itself when they are installed (which
    # is why tracing is an extra).
    script = (
        "OURS = ('opentelemetry.sdk.trace', 'opentelemetry.instrumentation',"
        " 'opentelemetry.exporter', 'pythonjsonlogger')\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "import sys; from taskbeam import config, tracing; from taskbeam.web import create_app\n"
        "app = create_app(config.load())\n"
        "assert not tracing.start('x', app)\n"
        "print(sorted(m for m in sys.modules if m.startswith(OURS)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LOG_"))}
    env.update(
        REDIS_URL="redis://127.0.0.1:1/0",  # never connected to here
        SECRET_KEY="no-tracing-" + "0123456789abcdef" * 2,
        WEB_FAST_TRANSPORT="0",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_traces_without_the_tracing_extra_are_refused(monkeypatch):
    real = config.importlib.util.find_spec
    monkeypatch.setattr(
        config.importlib.util,
        "find_spec",
        lambda name: None if name.startswith("opentelemetry") else real(name),
    )
    env = {"REDIS_URL": "redis://r:6379/0", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    with pytest.raises(config.ConfigError, match="PIP_EXTRAS=tracing"):
        config.load(env, need_secret=False)
