"""deploy/monitoring/ against the real stack: every metric the alert rules and the
Grafana dashboard name is a series of a web replica's /metrics, and the monitoring
Compose profile's Prometheus scrapes every replica and loads the rules."""

import json
import re
from pathlib import Path

import pytest
import requests
import yaml
from conftest import BASE_URL, compose, project_env, wait_until
from prometheus_client.parser import text_string_to_metric_families

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\btaskbeam_[a-z0-9_]+")
SCRAPE = (
    "import urllib.request; print(urllib.request.urlopen("
    "'http://127.0.0.1:8000/metrics', timeout=5).read().decode())"
)


def alert_rules():
    document = yaml.safe_load((MONITORING / "rules" / "taskbeam.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def referenced_metrics():
    """The taskbeam_* names in the rules' and the dashboard's queries."""
    dashboard = json.loads((MONITORING / "grafana" / "taskbeam.json").read_text())
    exprs = [rule["expr"] for rule in alert_rules()]
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return set(METRIC.findall("\n".join(exprs)))


def served_series():
    """Names of the samples the (first) web replica's /metrics serves. The text must
    parse with prometheus_client's parser (which refuses what Prometheus would); the
    names are read from the lines themselves, as Prometheus stores them: the parser
    renames a counter not ending in _total (taskbeam_mq_lag_seconds_sum_total)."""
    text = compose("exec", "-T", "web", "python", "-c", SCRAPE)
    assert list(text_string_to_metric_families(text))
    return {
        re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_metrics_serve_every_series_the_rules_and_the_dashboard_name():
    # An answer through Nginx, so the per-status counter has a sample.
    assert requests.get(f"{BASE_URL}/api/tasks", timeout=10).status_code == 200
    wanted = referenced_metrics()
    assert len(wanted) >= 20, wanted  # the scan of the queries finds them

    # The exports volume's figures come from a worker's measure, every 10 s.
    def measured():
        served = served_series()
        return served if "taskbeam_export_volume_free_bytes" in served else None

    served = wait_until(measured, 60, interval=1, what="the exports volume's gauges")
    missing = wanted - served
    assert not missing, f"deploy/monitoring/ names series /metrics does not serve: {missing}"


@pytest.fixture
def prometheus():
    """The monitoring profile's Prometheus, up and healthy; its base URL."""
    compose("--profile", "monitoring", "up", "-d", "--wait", "--no-deps", "prometheus", timeout=180)
    yield f"http://127.0.0.1:{project_env()['PROMETHEUS_PORT']}"
    compose("--profile", "monitoring", "rm", "--stop", "--force", "prometheus")


def api(base, path, **params):
    reply = requests.get(f"{base}/api/v1/{path}", params=params, timeout=10)
    reply.raise_for_status()
    return reply.json()["data"]


def test_the_monitoring_profile_scrapes_every_web_replica_with_the_rules(prometheus):
    replicas = len(compose("ps", "-q", "web").split())

    def targets_up():
        active = api(prometheus, "targets")["activeTargets"]
        web = [t for t in active if t["labels"]["job"] == "taskbeam-web"]
        return len(web) == replicas and all(t["health"] == "up" for t in web)

    wait_until(targets_up, 90, interval=1, what="Prometheus scraping every web replica")

    def rules_evaluated():
        health = {
            rule["name"]: rule["health"]
            for group in api(prometheus, "rules")["groups"]
            for rule in group["rules"]
        }
        return health if "unknown" not in health.values() else None

    health = wait_until(rules_evaluated, 60, interval=1, what="the rules evaluated once")
    assert health == {rule["alert"]: "ok" for rule in alert_rules()}

    def missing():
        return [
            name
            for name in sorted(referenced_metrics())
            if not api(prometheus, "query", query=f"count({name})")["result"]
        ]

    # The exports volume's gauges appear once a worker has measured it (every 10 s).
    try:
        wait_until(lambda: not missing(), 60, interval=2, what="a series of every metric")
    except AssertionError:
        pytest.fail(f"Prometheus has no series of {missing()}")
    workers = api(prometheus, "query", query="max(taskbeam_workers_alive)")["result"]
    assert float(workers[0]["value"][1]) >= 1
    firing = api(prometheus, "query", query='ALERTS{alertname="TaskbeamNoWorkerAlive"}')
    assert firing["result"] == []
