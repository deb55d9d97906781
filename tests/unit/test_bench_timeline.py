"""The pure parts of `make bench`'s timeline (bench/timeline.py): where a
container's CPU time is on the host, the machine's CPU, the web's counters, Docker's
exec events paired into health checks, and readings put into 100-ms buckets."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import timeline  # noqa: E402  (a script's module, not a package)

from taskbeam.web.metrics import Metrics  # noqa: E402

CID = "c3b8af0775b381bbd8c337492ff794fb2c913b6c8fb0fe8046d1570ade20ba52"


def test_a_containers_cpu_file_on_the_host_cgroup_v1_and_v2(tmp_path):
    v1 = f"12:memory:/docker/{CID}\n4:cpu,cpuacct:/docker/{CID}\n1:name=systemd:/docker/{CID}\n"
    path = timeline.cgroup_cpu_file(1, v1, root=str(tmp_path))
    assert path == tmp_path / "cpu,cpuacct" / "docker" / CID / "cpuacct.usage"
    path.parent.mkdir(parents=True)
    path.write_text("2500000000\n")
    assert timeline.cpu_seconds_of(path) == 2.5
    v2 = timeline.cgroup_cpu_file(1, f"0::/system.slice/docker-{CID}.scope\n", root=str(tmp_path))
    assert v2 == tmp_path / "system.slice" / f"docker-{CID}.scope" / "cpu.stat"
    v2.parent.mkdir(parents=True)
    v2.write_text("usage_usec 1500000\nuser_usec 1000000\n")
    assert timeline.cpu_seconds_of(v2) == 1.5
    with pytest.raises(LookupError):
        timeline.cgroup_cpu_file(1, "3:memory:/x\n")


def test_the_machines_busy_and_total_cpu_from_proc_stat():
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy, total = timeline.machine_cpu("cpu  300 0 100 500 100 0 0 0 50 0\ncpu0 1 2 3 4\n")
    assert (busy * timeline.TICKS, total * timeline.TICKS) == (400, 1000)


def test_the_web_counters_read_from_its_own_metrics_text():
    metrics = Metrics()
    metrics.read(3)
    metrics.read(5)

    class NoRooms:
        rooms = {}

    counters = timeline.web_counters(metrics.render(NoRooms()))
    assert (counters["mq_reads"], counters["mq_messages"]) == (2, 8)
    assert len(counters["gc"]) == 3 and counters["gc"][0] >= 0
    assert len(counters["gc_pause_s"]) == 3


def event(action, exec_id, at_s, service="web", **attrs):
    return {
        "Action": action,
        "timeNano": int(at_s * 1e9),
        "Actor": {
            "Attributes": {"execID": exec_id, "com.docker.compose.service": service, **attrs}
        },
    }


def test_exec_events_pair_into_checks_with_their_duration_and_exit_code():
    checks = timeline.execs(
        [
            event("exec_start: wget -q -O /dev/null http://x/", "b", 11.0, "nginx"),
            event("exec_start: python -I -S -c pass", "a", 10.0),
            event("exec_die", "a", 10.5, exitCode="1"),
            event("exec_die", "z", 12.0),  # started before the window: not a check here
        ]
    )
    assert [(c["service"], c["start"], c["end"], c.get("exit_code")) for c in checks] == [
        ("web", 10.0, 10.5, 1),
        ("nginx", 11.0, None, None),
    ]
    assert checks[0]["command"] == "python -I -S -c pass"


def sample(t, web=0.0, loadgen=0.0, busy=0.0, total=0.0):
    return {"t": t, "cpu": {"web": web, "loadgen": loadgen}, "machine": (busy, total)}


def test_buckets_put_latency_by_receive_time_and_rates_by_sample_end():
    start = 100.0
    receipts = [(100.01, 5.0), (100.05, 7.0), (100.15, 250.0), (100.31, 1.0), (99.0, 9.0)]
    samples = [
        sample(100.0),
        sample(100.1, web=0.05, loadgen=0.02, busy=0.1, total=0.2),
        sample(100.2, web=0.05, loadgen=0.12, busy=0.3, total=0.4),
    ]
    counters = {"gc": [0, 0, 0], "gc_pause_s": [0, 0, 0], "mq_reads": 10, "mq_messages": 100}
    later = {"gc": [3, 0, 1], "gc_pause_s": [0.001, 0, 0.02], "mq_reads": 14, "mq_messages": 300}
    scrapes = [
        {"t": 100.05, "asked": 100.04, "web": counters},
        {"t": 100.15, "asked": 100.1, "web": later},
    ]
    rows = timeline.buckets(receipts, samples, scrapes, start, 100.4)
    assert [r["events"] for r in rows] == [2, 1, 0, 1]
    assert (rows[0]["p50_ms"], rows[0]["max_ms"], rows[2]["p99_ms"]) == (7.0, 7.0, None)
    cores = timeline.os.cpu_count()
    # The interval 100.0-100.1 ends in bucket 1 (float rounding: 100.1 - 100.0 < 0.1).
    first = next(r for r in rows if "web" in r["cpu_percent"])
    assert first["cpu_percent"]["web"] == 50
    assert first["cpu_percent"]["machine"] == 50 * cores
    assert first["cpu_percent"]["other"] == 50 * cores - 50 - 20
    assert rows[1]["gc"] == [3, 0, 1] and rows[1]["gc_pause_ms"] == [1.0, 0.0, 20.0]
    assert (rows[1]["mq_reads"], rows[1]["mq_batch"], rows[1]["scrape_ms"]) == (4, 50.0, 50.0)

    found = timeline.spikes(rows, [{"service": "web", "start": 100.12, "end": 100.2}], start, 100)
    assert [(s["t"], s["health_checks"], s["full_gcs"]) for s in found] == [(0.1, ["web"], 1)]
    summary = timeline.summary(rows, [], start, 100)
    assert (summary["buckets_over_limit"], summary["full_gcs"]) == (1, 1)
