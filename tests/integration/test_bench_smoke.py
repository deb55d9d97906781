"""A small run of `make bench` against the test stack: it works and loses nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import BASE_URL

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench(*args):
    """A smoke run of bench.py against the test stack; its output."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--url", BASE_URL, "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_bench_smoke_run_reports_latency_fan_in_and_connections():
    done = bench()
    result = json.loads((BENCH / "results" / "bench.json").read_text())
    assert result["smoke"] is True
    latency = result["latency"]["runs"][0]
    assert latency["events"] == latency["emitted"] > 0 and latency["p50_ms"] > 0
    # The tuned client on both feeds, and the stock client fed by the stock emitter.
    for mode in ("publish", "persist", "stock"):
        run = result["fan_in"][mode]["runs"][0]
        step = run["steps"][0]
        assert step["lost"] == 0 and step["delivered"] == step["emitted"] > 0, mode
        assert step["web_cpu_us_per_event"] > 0 and step["cpu_percent"]["web"] > 0
        assert run["client"] == ("stock" if mode == "stock" else "tuned")
    assert result["publish"] == "in-append"
    assert result["connections"]["runs"][0]["levels"][0]["clients"] == 100
    opened = result["open_sockets"]["runs"][0]  # stock clients opened and subscribed
    assert opened["clients"] == 100 and opened["seconds"] > 0
    assert opened["web_cpu_us_per_client"] > 0
    assert result["summary"]["single_client_p50_ms"]["median"] == latency["p50_ms"]
    assert "single client" in done.stdout and "fan-in persist" in done.stdout
    assert "stock client + stock emitter" in done.stdout


def test_bench_timeline_smoke_run_records_each_100_ms():
    done = bench("--timeline", "200", "--label", "smoke")
    result = json.loads((BENCH / "results" / "timeline-smoke.json").read_text())
    assert result["lost"] == 0 and result["delivered"] == result["emitted"] > 1000
    rows = result["buckets"]
    assert 100 <= len(rows) <= 130  # 10 s held, 1.5 s to drain, in 100-ms buckets
    assert sum(r["events"] for r in rows) == result["delivered"]
    measured = [r for r in rows if r["cpu_percent"].get("web")]
    assert len(measured) > len(rows) / 2
    assert {"worker", "redis", "nginx", "loadgen", "machine", "other"} <= set(
        measured[0]["cpu_percent"]
    )
    # The web's own counters, scraped: its listener read the events (a few per read).
    assert sum(r.get("mq_reads", 0) for r in rows) > 0
    assert all(len(r["gc_pause_ms"]) == 3 for r in rows if "gc_pause_ms" in r)
    assert all(c["service"] in ("web", "worker", "redis", "nginx") for c in result["health_checks"])
    assert (BENCH / "results" / "timeline-smoke.png").stat().st_size > 10_000
    assert "timeline smoke" in done.stdout
