"""Cost of traces on the persist path: one task event appended and published by the
worker's emitter, with OpenTelemetry's Redis instrumentation off and on, in turn
(off, on, off, on... three rounds each), so that the machine's load falls on both.

Spans go over OTLP/HTTP to a sink started here (a process of its own that answers
200 and drops them), as they would to a collector. Runs inside a worker container
built with the ``tracing`` extra, on the worker's own code path:
    docker compose exec -T worker python - < bench/tracing_cost.py
Prints one JSON object (or ``{"skipped": why}``); creates one scratch task and
deletes it.
"""

import json
import os
import statistics
import subprocess
import sys
import time

N = 2000
ROUNDS = 3

SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def p50_us(fn, n):
    samples = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main():
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError:
        print(json.dumps({"skipped": "the image has no tracing extra (PIP_EXTRAS=tracing)"}))
        return
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        port = int(sink.stdout.readline())
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        from taskbeam import protocol, tracing, worker

        run(worker, protocol, tracing, trace, RedisInstrumentor)
    finally:
        sink.terminate()


def run(worker, protocol, tracing, trace, instrumentor):
    store, emitter = worker.store, worker.emitter
    task = store.create(kind="simulate", owner="bench", params={})
    task_id = task["id"]
    rounds = {"off": [], "on": []}
    try:
        token = store.claim_run(task_id, 3600)
        store.append(task_id, token=token, state=protocol.RUNNING)

        def emit(i):
            emitter.emit(task_id, token=token, progress=i % 100, message="bench")

        tracing.start("taskbeam-bench")  # instruments Redis (and Celery) once
        instrumentor().uninstrument()
        for _ in range(ROUNDS):
            rounds["off"].append(p50_us(emit, N))
            instrumentor().instrument(tracer_provider=trace.get_tracer_provider())
            rounds["on"].append(p50_us(emit, N))
            instrumentor().uninstrument()
        tracing.flush()
    finally:
        store.release_lease(task_id, token)
        store.delete(task_id, "bench")
    off, on = (statistics.median(rounds[k]) for k in ("off", "on"))
    print(
        json.dumps(
            {
                "persist_and_publish_p50_us": {
                    "traces_off": round(off, 1),
                    "traces_on": round(on, 1),
                },
                "rounds_p50_us": {k: [round(v, 1) for v in vs] for k, vs in rounds.items()},
                "events_per_round": N,
            }
        )
    )


main()
