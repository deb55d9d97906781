"""One trace from ``POST /api/tasks`` to the worker's event appends, and the request's
id on the worker's JSON lines: the real instrumentations export over OTLP/HTTP to a
receiver here that decodes the protobuf with the official opentelemetry-proto.

The web (Flask's test client) and a Celery prefork worker run in processes of their
own, as in the stack, on a real Redis: tracing patches libraries for the whole process.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import wait_until_serving
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import redis as redis_lib

ROOT = Path(__file__).resolve().parents[2]
REQUEST_ID = "0123456789abcdef" * 2

WEB = """
from gevent import monkey
monkey.patch_all()  # as Gunicorn's gevent worker does
import json, sys
from taskbeam import config, tracing
from taskbeam.web import create_app
app = create_app(config.load())
answer = app.test_client().post(
    "/api/tasks",
    json={"kind": "simulate", "params": {"steps": 2, "step_ms": 0}},
    headers={"X-Request-ID": sys.argv[1]},
)
tracing.flush()
print(json.dumps({"status": answer.status_code, "id": answer.json.get("id")}))
"""


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: every span it was sent, with its service name."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.spans, self.lock = [], threading.Lock()

    def with_trace(self, trace_id):
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/traces"
        assert self.headers["Content-Type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.server.lock:
                        self.server.spans.append(
                            {
                                "service": attributes.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": span.kind,
                            }
                        )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def tcp_redis(tmp_path):
    """redis://127.0.0.1:PORT/0 of a throwaway Redis (the settings want a host)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    wait_until_serving(redis_lib.Redis(port=port), proc)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def env_for(redis_url, receiver, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LOG_"))}
    env.update(
        REDIS_URL=redis_url,
        SECRET_KEY="tracing-test-" + "0123456789abcdef" * 2,
        TASKBEAM_NAMESPACE="tracing",
        JOBS_MODULES="jobs",
        EXPORT_DIR=str(tmp_path / "exports"),
        LOG_FORMAT="json",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_address[1]}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        PYTHONPATH=str(ROOT),
    )
    return env


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_one_trace_runs_from_the_request_to_the_event_appends(tcp_redis, receiver, tmp_path):
    env = env_for(tcp_redis, receiver, tmp_path)
    web = subprocess.run(
        [sys.executable, "-c", WEB, REQUEST_ID],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert web.returncode == 0, web.stderr
    created = json.loads(web.stdout.splitlines()[-1])
    assert created["status"] == 202, web.stderr
    task_id = created["id"]
    web_lines = [json.loads(line) for line in web.stderr.splitlines() if line.startswith("{")]
    (made,) = [line for line in web_lines if line.get("task_id") == task_id]
    assert made["request_id"] == REQUEST_ID and made["owner"] and made["trace_id"]
    trace_id = made["trace_id"]

    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "--app", "taskbeam.worker", "worker"]
            + ["--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def worker_appended():
            spans = receiver.with_trace(trace_id)
            runs = [s for s in spans if s["service"] == "taskbeam-worker" and "run/" in s["name"]]
            return runs and [
                s for s in spans if s["parent"] == runs[0]["span_id"] and "EVALSHA" in s["name"]
            ]

        wait_for(worker_appended, 60, "the worker's run span with its event appends")

        def worker_lines():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            return [x for x in lines if x.get("task_id") == task_id and x.get("run")] or None

        lines = wait_for(worker_lines, 30, "the worker's lines of the task")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert {line["request_id"] for line in lines} == {REQUEST_ID}
    assert {line["owner"] for line in lines} == {made["owner"]}
    assert {line["trace_id"] for line in lines} == {trace_id}

    spans = receiver.with_trace(trace_id)
    names = {(s["service"], s["name"]) for s in spans}
    assert ("taskbeam-web", "POST /api/tasks") in names
    assert any(svc == "taskbeam-web" and n.startswith("apply_async/") for svc, n in names)
    by_id = {s["span_id"]: s for s in spans}
    run = next(s for s in spans if s["name"].startswith("run/"))
    publish = by_id[run["parent"]]
    assert publish["name"].startswith("apply_async/")
    assert by_id[publish["parent"]]["name"] == "POST /api/tasks"
