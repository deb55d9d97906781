"""Traces on the stack: web (gevent) and workers (prefork) send OTLP/HTTP to a receiver
container that decodes it with opentelemetry-proto; one trace runs from Nginx's request
to the worker's event appends. The image needs the tracing extra (tests/run.sh builds
it with PIP_EXTRAS=postgres,tracing); web and workers are put back as they were after."""

import json
import os
import subprocess
import time

import pytest
from conftest import TERMINAL, docker, json_lines, project_env, wait_until

# Prints one JSON line per span it is sent.
RECEIVER = """
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    print(json.dumps({"service": service.get("service.name"), "name": s.name,
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex()}), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 4318), Handler).serve_forever()
"""


def recreate_web_and_workers(**env):
    done = subprocess.run(
        ["docker", "compose", "up", "-d", "--wait", "--no-deps", "--scale", "worker=3"]
        + ["web", "worker"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def receiver():
    project = os.environ.get("COMPOSE_PROJECT_NAME", "taskbeam-test")
    tag = project_env().get("IMAGE_TAG") or "latest"
    name = f"{project}-otel-receiver"
    docker("rm", "-f", name)
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        f"{project}_back",
        "--network-alias",
        "otel",
        "--entrypoint",
        "python",
        f"taskbeam-app:{tag}",
        "-c",
        RECEIVER,
    )
    docker("network", "connect", "--alias", "otel", f"{project}_front", name)
    recreate_web_and_workers(OTEL_EXPORTER_OTLP_ENDPOINT="http://otel:4318")
    yield name
    recreate_web_and_workers(OTEL_EXPORTER_OTLP_ENDPOINT="")
    docker("rm", "-f", name)


def spans_of(receiver, trace_id):
    lines = docker("logs", receiver).splitlines()
    spans = [json.loads(line) for line in lines if line.startswith("{")]
    return [s for s in spans if s["trace_id"] == trace_id]


def test_one_trace_from_the_request_to_the_event_appends(api, receiver):
    since = str(int(time.time()) - 1)
    task = api.create(steps=2, step_ms=10)
    wait_until(lambda: api.snapshot(task["id"])["state"] in TERMINAL, 60, what="the task to end")

    def created_line():
        return [x for x in json_lines("web", since) if x.get("task_id") == task["id"]]

    (line,) = wait_until(created_line, 20, what="the web's line")
    trace_id = line["trace_id"]

    def whole_trace():
        spans = spans_of(receiver, trace_id)
        runs = [s for s in spans if s["name"].startswith("run/")]
        appends = runs and [
            s for s in spans if s["parent"] == runs[0]["span_id"] and "EVALSHA" in s["name"]
        ]
        return spans if appends else None

    spans = wait_until(whole_trace, 30, what="the worker's run and its appends")
    by_id = {s["span_id"]: s for s in spans}
    run = next(s for s in spans if s["name"].startswith("run/"))
    publish = by_id[run["parent"]]
    request = by_id[publish["parent"]]
    assert (run["service"], publish["service"]) == ("taskbeam-worker", "taskbeam-web")
    assert publish["name"].startswith("apply_async/")
    assert (request["name"], request["service"]) == ("POST /api/tasks", "taskbeam-web")
