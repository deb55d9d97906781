"""The stack as a user gets it from `make up`: healthy, locked down, live progress end to end."""

import json

import requests
from conftest import BASE_URL, assert_gapless_single_terminal, compose, docker

SERVICES = ("redis", "web", "worker", "nginx")


def test_compose_file_is_valid():
    compose("config", "-q")


def test_readyz_and_healthz_answer_through_nginx():
    assert requests.get(f"{BASE_URL}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{BASE_URL}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_every_service_runs_as_non_root():
    for service in SERVICES:
        for index in range(1, int(compose("ps", "-q", service).count("\n")) + 1):
            status = compose("exec", "-T", "--index", str(index), service, "cat", "/proc/1/status")
            uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            assert uid != "0", f"{service} #{index} runs as root"


def test_redis_is_not_published_to_the_host():
    container = compose("ps", "-q", "redis").split()[0]
    ports = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Ports}}", container))
    assert not any(ports.values()), f"Redis publishes {ports}"
    assert compose("port", "redis", "6379", check=False).strip() == ""


def test_page_is_served_by_nginx_with_a_strict_csp():
    page = requests.get(f"{BASE_URL}/", timeout=5)
    assert page.status_code == 200
    assert 'id="kind-picker"' in page.text  # the forms come from GET /api/kinds
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    client = requests.get(f"{BASE_URL}/vendor/socket.io-4.8.1.min.js", timeout=5)
    assert client.status_code == 200 and "Socket.IO v4.8.1" in client.text


def test_six_tasks_reach_the_client_gapless_from_several_worker_replicas(api, watcher):
    tasks = [api.create(steps=8, step_ms=250) for _ in range(6)]
    for task in tasks:
        assert task["seq"] == 1 and task["state"] == "queued"
        watcher.follow(task["id"])
    watcher.wait_terminal([t["id"] for t in tasks], timeout=60)

    for task in tasks:
        history = watcher.history(task["id"])
        assert_gapless_single_terminal(history)
        assert [e["state"] for e in history[:2]] == ["queued", "running"]
        assert history[-1]["result"] == {"steps": 8}
    # The snapshot names the worker replica (its container host name) that ran it.
    workers = {api.snapshot(t["id"])["worker"] for t in tasks}
    assert len(workers) >= 2, f"all tasks ran on {workers}"
