"""The deployment's gauges for autoscalers and alerts (GET /metrics: queue length, tasks
queued and the oldest one's age, tasks running, workers alive, Redis's memory, the
exports volume), against the real store, Celery's real queue layout and a throwaway
Redis."""

import dataclasses
import os
from types import SimpleNamespace

import redis as redis_lib
from taskbeam import broker, housekeeping, quotas
from taskbeam.runtime import Runtime
from taskbeam.web.metrics import render_operator_gauges, resource_gauges


def test_a_worker_reports_only_while_its_consumer_touches_the_alive_file(
    store, settings, tmp_path, monkeypatch
):
    runtime = Runtime(settings, None, store, None)
    alive = tmp_path / "alive"
    monkeypatch.setattr(housekeeping, "ALIVE_FILE", str(alive))
    assert housekeeping.report_alive(runtime) is False  # consumer never started
    alive.touch()
    assert housekeeping.report_alive(runtime) is True
    assert store.operator_gauges()["workers_alive"] == 1
    stale = os.stat(alive).st_mtime - housekeeping.ALIVE_STALE_S - 1
    os.utime(alive, (stale, stale))
    assert housekeeping.report_alive(runtime) is False  # a stuck consumer is not counted


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


def samples_of(text):
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_redis_memory_and_the_exports_volume_are_gauges(
    redis_client, store, settings, tmp_path, monkeypatch
):
    """What the alert rules (deploy/monitoring/) watch: Redis's memory against its
    cap, and the exports volume as a worker last measured it."""
    settings = dataclasses.replace(settings, export_dir=str(tmp_path))
    redis_client.config_set("maxmemory", 50_000_000)
    try:
        found = samples_of(resource_gauges(redis_client, settings))
    finally:
        redis_client.config_set("maxmemory", 0)
    assert found["taskbeam_redis_maxmemory_bytes"] == 50_000_000
    assert 0 < found["taskbeam_redis_used_memory_bytes"] < 50_000_000
    assert "taskbeam_export_volume_free_bytes" not in found  # no worker measured yet
    volume = SimpleNamespace(f_blocks=1000, f_frsize=4096, f_bavail=300)
    monkeypatch.setattr(quotas.os, "statvfs", lambda path: volume)
    (tmp_path / "abc.1.csv").write_bytes(b"x" * 700)
    quotas.report_export_usage(redis_client, store, settings)
    found = samples_of(resource_gauges(redis_client, settings))
    assert found["taskbeam_export_volume_size_bytes"] == 4_096_000
    assert found["taskbeam_export_volume_free_bytes"] == 1_228_800
    assert found["taskbeam_export_volume_floor_bytes"] == 409_600  # EXPORT_MIN_FREE_PCT=10
    assert found["taskbeam_exports_stored_bytes"] == 700
    assert found["taskbeam_exports_cap_bytes"] == 2_048_000  # half the volume


def test_a_redis_user_without_info_still_gets_the_export_gauges(
    redis_server, redis_client, store, settings, tmp_path
):
    settings = dataclasses.replace(settings, export_dir=str(tmp_path))
    quotas.report_export_usage(redis_client, store, settings)
    redis_client.acl_setuser(
        "noinfo", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"]
    )
    limited = redis_lib.Redis(
        unix_socket_path=redis_server, username="noinfo", password="pw", decode_responses=True
    )
    try:
        found = samples_of(resource_gauges(limited, settings))
    finally:
        limited.close()
        redis_client.acl_deluser("noinfo")
    assert "taskbeam_redis_used_memory_bytes" not in found
    assert "taskbeam_export_volume_free_bytes" in found
