"""deploy/monitoring/: the alert rules pass their promtool unit tests, and fail them
when a threshold is moved on purpose; the rules and the Grafana dashboard name only
metrics that /metrics renders (tests/integration/test_monitoring.py checks a real
stack's). promtool is Debian's `prometheus` package (.ci/provision.sh installs it)."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import socketio
import yaml

from taskbeam import quotas
from taskbeam.web.metrics import (
    OPERATOR_GAUGES,
    Metrics,
    render_operator_gauges,
    resource_gauges,
)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "taskbeam.yml"
RULE_TESTS = MONITORING / "tests" / "taskbeam.test.yml"
DASHBOARD = MONITORING / "grafana" / "taskbeam.json"
METRIC = re.compile(r"\btaskbeam_[a-z0-9_]+")

# (alert, the threshold as written, moved): each move must fail a promtool test case.
MOVED_THRESHOLDS = [
    ("TaskbeamTaskWaiting", "> 300", "> 150"),
    ("TaskbeamTaskWaiting", "> 300", "> 600"),
    ("TaskbeamNoWorkerAlive", "< 1", "< 2"),
    ("TaskbeamRedisMemoryNearCap", "> 0.7", "> 0.65"),
    ("TaskbeamRedisMemoryNearCap", "> 0.7", "> 0.75"),
    ("TaskbeamRedisMemoryHighWater", ">= 0.8", ">= 0.85"),
    ("TaskbeamRedisMemoryHighWater", ">= 0.8", ">= 0.75"),
    ("TaskbeamEventLag", "> 1", "> 0.5"),
    ("TaskbeamEventLag", "> 1", "> 1.5"),
    ("TaskbeamHttp5xx", "> 0.05", "> 0.02"),
    ("TaskbeamHttp5xx", "> 0.05", "> 0.1"),
    ("TaskbeamHttp5xx", ">= 5", ">= 2"),
    ("TaskbeamExportVolumeNearFull", "< 0.2", "< 0.25"),
    ("TaskbeamExportVolumeNearFull", "< 0.2", "< 0.1"),
    ("TaskbeamExportsRefused", "floor_bytes) <= 0", "floor_bytes) <= -50"),
    ("TaskbeamExportsRefused", "floor_bytes) <= 0", "floor_bytes) <= 50"),
    ("TaskbeamExportsRefused", "stored_bytes) <= 0", "stored_bytes) <= -100"),
    ("TaskbeamExportsRefused", "stored_bytes) <= 0", "stored_bytes) <= 100"),
]


@pytest.fixture(scope="module")
def promtool():
    """promtool's path; absent, a skip on a developer's machine and a failure in CI."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is needed: apt-get install prometheus (.ci/provision.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run(promtool, *args, cwd=MONITORING):
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts():
    return {
        rule["alert"]: rule
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }


def test_the_rules_and_the_prometheus_config_are_valid(promtool):
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = run(promtool, "check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_rules_pass_their_unit_tests(promtool):
    tested = run(promtool, "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_test_cases():
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"]}
    assert tested == set(alerts())


def mutated_copy(tmp_path, alert, change):
    """deploy/monitoring/ copied to ``tmp_path`` with ``change(expr)`` as ``alert``'s."""
    copy = tmp_path / "monitoring"
    shutil.copytree(MONITORING, copy)
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = change(rule["expr"])
    (copy / "rules" / "taskbeam.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    return copy


@pytest.mark.parametrize(("alert", "written", "moved"), MOVED_THRESHOLDS)
def test_a_moved_threshold_fails_the_unit_tests(promtool, tmp_path, alert, written, moved):
    expr = alerts()[alert]["expr"]
    assert expr.count(written) == 1, f"{alert}: {written!r} not once in {expr!r}"
    copy = mutated_copy(tmp_path, alert, lambda e: e.replace(written, moved))
    tested = run(promtool, "test", "rules", "tests/taskbeam.test.yml", cwd=copy)
    assert tested.returncode != 0, f"{alert} with {moved!r} still passes:\n{tested.stdout}"
    assert alert in tested.stdout + tested.stderr


@pytest.mark.parametrize("alert", sorted(alerts()))
def test_an_alert_that_never_fires_fails_the_unit_tests(promtool, tmp_path, alert):
    copy = mutated_copy(tmp_path, alert, lambda e: "vector(1) < 0")
    tested = run(promtool, "test", "rules", "tests/taskbeam.test.yml", cwd=copy)
    assert tested.returncode != 0, f"no test case sees {alert} fire"


def referenced_metrics():
    """Metric names the rules and the dashboard's queries use."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [rule["expr"] for rule in alerts().values()]
    exprs += [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    return set(METRIC.findall("\n".join(exprs)))


def rendered_names(text):
    """The families of Prometheus text ``text`` (its TYPE lines), each sample checked to
    belong to one."""
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r"[a-z_]+", line).group(0) in families, line
    return families


def test_the_rules_and_dashboard_name_only_rendered_metrics(
    redis_client, store, settings, tmp_path
):
    settings = dataclasses.replace(settings, export_dir=str(tmp_path))
    quotas.report_export_usage(redis_client, store, settings)
    text = (
        Metrics().render(socketio.Manager())
        + render_operator_gauges(
            {name.removeprefix("taskbeam_"): 0 for name, _text in OPERATOR_GAUGES}
        )
        + resource_gauges(redis_client, settings)
    )
    referenced = referenced_metrics()
    assert {"taskbeam_workers_alive", "taskbeam_http_responses_total"} <= referenced
    missing = referenced - rendered_names(text)
    assert not missing, f"named in deploy/monitoring/ but not in /metrics: {sorted(missing)}"
