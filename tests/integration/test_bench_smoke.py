"""A small run of `make bench` against the test stack: it works and loses nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import BASE_URL

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_bench_smoke_run_reports_latency_fan_in_and_connections():
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--url", BASE_URL, "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-2000:]
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
    assert result["summary"]["single_client_p50_ms"]["median"] == latency["p50_ms"]
    assert "single client" in done.stdout and "fan-in persist" in done.stdout
    assert "stock client + stock emitter" in done.stdout
