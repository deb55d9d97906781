"""The web process's own counters in GET /metrics that `make bench`'s timeline samples:
garbage collections (per generation, with their pauses) and the message-queue
listener's reads (messages per socket read), against the real objects."""

import gc
import re
import threading
import time

import socketio
from flask import Flask

from taskbeam.web.fastws import listener
from taskbeam.web.metrics import Metrics


def sample(text, name, **labels):
    """The value of one row of the Prometheus text ``text``."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    row = "^" + re.escape(name + (f"{{{label}}}" if label else "")) + r" (\S+)$"
    found = re.search(row, text, re.M)
    assert found, f"no {name} {labels} in:\n{text}"
    return float(found.group(1))


def rendered(metrics):
    return metrics.render(socketio.Manager())


def test_full_collections_are_counted_with_their_pauses():
    metrics = Metrics()
    before = rendered(metrics)
    gc.collect(2)
    gc.collect(2)
    after = rendered(metrics)
    full = "taskbeam_gc_collections_total"
    assert sample(after, full, generation=2) - sample(before, full, generation=2) == 2
    pause = "taskbeam_gc_pause_seconds_total"
    assert sample(after, pause, generation=2) > sample(before, pause, generation=2)
    gc.collect(0)
    assert sample(rendered(metrics), full, generation=0) > sample(after, full, generation=0)


def test_one_process_one_gc_hook_however_many_metrics():
    Metrics(), Metrics()
    ours = [c for c in gc.callbacks if getattr(c, "__module__", "") == "taskbeam.web.metrics"]
    assert len(ours) == 1


def test_the_fast_listener_counts_messages_per_socket_read(redis_server, redis_client):
    metrics = Metrics()
    manager = listener.FastRedisManager(f"unix://{redis_server}", "sio", metrics)
    got = []

    def listen():
        messages = manager.listen()
        for message in messages:
            got.append(message)
            if message == "stop":
                messages.close()
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while redis_client.pubsub_numsub("sio")[0][1] != 1:
        assert time.monotonic() < deadline, "the listener did not subscribe"
        time.sleep(0.01)
    pipe = redis_client.pipeline(transaction=False)
    for n in range(50):
        pipe.publish("sio", f"m{n}")
    pipe.execute()  # 50 messages written at once: read in far fewer than 50 reads
    while len(got) < 50:  # then "stop" in a read of its own
        assert time.monotonic() < deadline, f"the listener got {len(got)} of 50"
        time.sleep(0.01)
    redis_client.publish("sio", "stop")
    thread.join(10)
    assert got[-1] == "stop"
    text = rendered(metrics)
    reads = sample(text, "taskbeam_mq_reads_total")
    # A read is counted once its batch is done: the stop message's is not (the generator
    # closes at it); every message before it is.
    assert sample(text, "taskbeam_mq_messages_total") >= 50
    assert 1 <= reads < 50


def test_responses_are_counted_by_status_but_not_the_probes():
    """The 5xx-rate alert's counter: every answer of the app, an unhandled error's
    500 too; the health checks and scrapes every few seconds are left out."""
    metrics = Metrics()
    app = Flask(__name__)
    metrics.count_responses(app)
    app.add_url_rule("/ok", "ok", lambda: "fine")
    app.add_url_rule("/healthz", "healthz", lambda: "fine")

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    client = app.test_client()
    client.get("/ok"), client.get("/ok"), client.get("/missing"), client.get("/boom")
    client.get("/healthz")
    text = rendered(metrics)
    assert "# TYPE taskbeam_http_responses_total counter" in text
    assert sample(text, "taskbeam_http_responses_total", code="200") == 2
    assert sample(text, "taskbeam_http_responses_total", code="404") == 1
    assert sample(text, "taskbeam_http_responses_total", code="500") == 1
