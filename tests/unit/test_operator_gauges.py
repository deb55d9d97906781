"""The deployment's gauges for autoscalers (GET /metrics: queue length, tasks queued
and the oldest one's age, tasks running, workers alive), against the real store,
Celery's real queue layout and a throwaway Redis."""

import os

from taskbeam import broker
from taskbeam.web.metrics import render_operator_gauges

os.environ.setdefault("REDIS_URL", "redis://placeholder:6379/0")
from taskbeam import worker  # noqa: E402  (needs REDIS_URL at import)


def test_a_worker_reports_only_while_its_consumer_touches_the_alive_file(
    store, settings, tmp_path, monkeypatch
):
    runtime = worker.Runtime(settings, None, store, None)
    alive = tmp_path / "alive"
    monkeypatch.setattr(worker, "ALIVE_FILE", str(alive))
    assert worker.report_alive(runtime) is False  # consumer never started
    alive.touch()
    assert worker.report_alive(runtime) is True
    assert store.operator_gauges()["workers_alive"] == 1
    stale = os.stat(alive).st_mtime - worker.ALIVE_STALE_S - 1
    os.utime(alive, (stale, stale))
    assert worker.report_alive(runtime) is False  # a stuck consumer is not counted


def test_queue_length_counts_waiting_messages_not_reserved_ones(
    redis_server, redis_client, settings, request
):
    app = broker.make_celery(settings)
    app.conf.broker_url = f"redis+socket://{redis_server}"
    request.addfinalizer(app.close)
    for task_id in ("a", "b", "c"):
        app.send_task("taskbeam.simulate", args=[task_id, {}], task_id=task_id)
    assert broker.queue_lists(app)[0] == "t:celery:celery"  # what KEDA's scaler reads
    assert broker.queue_length(redis_client, app) == 3
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue, no_ack=False)
        message = queue.get(timeout=5)  # reserved by a worker: off the list
        assert broker.queue_length(redis_client, app) == 2
        message.ack()
        queue.close()


def test_the_gauges_render_as_prometheus_text():
    text = render_operator_gauges(
        {
            "queue_length": 4,
            "tasks_queued": 5,
            "oldest_queued_age_seconds": 12.5,
            "tasks_running": 8,
            "workers_alive": 2,
        }
    )
    samples = dict(line.split() for line in text.splitlines() if line and not line.startswith("#"))
    assert samples == {
        "taskbeam_queue_length": "4",
        "taskbeam_tasks_queued": "5",
        "taskbeam_oldest_queued_age_seconds": "12.5",
        "taskbeam_tasks_running": "8",
        "taskbeam_workers_alive": "2",
    }
    assert "# TYPE taskbeam_workers_alive gauge" in text
