"""`make bench TIMELINE=RATE`: one stock-client step held at RATE, per 100-ms bucket.

What a latency spike lines up with, side by side: events delivered and their
emit→receive p50/p99/max; CPU of every container (its cgroup, read on the host: a
`docker exec` would cost more than it measures), of this load generator and of the
whole machine (/proc/stat); the web process's garbage collections and its message-
queue listener's reads (its GET /metrics, sampled every 100 ms: a small text page
from a process with a thousand sockets); and every health check, from Docker's event
log (`exec_start`/`exec_die`, read after the step, so nothing runs during it).
Writes bench/results/timeline-LABEL.json and .png.
"""

import json
import multiprocessing
import os
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

BUCKET_S = 0.1
SERVICES = ("web", "worker", "redis", "nginx")
TICKS = os.sysconf("SC_CLK_TCK")


class Receipts:
    """The stock clients' events: (receive time, emit→receive ms)."""

    def __init__(self):
        self.rows = []

    def on_event(self, name, data):
        if name == "task_update" and data["message"] == "bench":
            now = time.time()
            self.rows.append((now, (now - data["ts"]) * 1000))


def cgroup_cpu_file(pid, cgroup_text=None, root="/sys/fs/cgroup"):
    """The host file holding the CPU time of the cgroup of process ``pid``."""
    text = cgroup_text if cgroup_text is not None else Path(f"/proc/{pid}/cgroup").read_text()
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):  # cgroup v1: nanoseconds
            return Path(root, controllers, path.lstrip("/"), "cpuacct.usage")
    for line in text.splitlines():
        if line.startswith("0::"):  # cgroup v2: usage_usec in cpu.stat
            return Path(root, line[3:].lstrip("/"), "cpu.stat")
    raise LookupError(f"no CPU cgroup for process {pid}")


def cpu_seconds_of(path):
    text = path.read_text()
    if path.name == "cpu.stat":
        return int(text.split("usage_usec", 1)[1].split()[0]) / 1e6
    return int(text) / 1e9


def machine_cpu(stat_text=None):
    """(busy, total) CPU seconds of the whole machine, from /proc/stat's first line."""
    text = stat_text if stat_text is not None else Path("/proc/stat").read_text()
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS, sum(fields[:8]) / TICKS


def process_cpu(pids):
    """User + system CPU seconds of processes (every thread), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


METRIC_ROW = re.compile(r"^(taskbeam_[a-z_]+)(\{[^}]*\})? (\S+)$", re.M)


def web_counters(text):
    """The counters the timeline draws, from the web's Prometheus text."""
    rows = {name + (labels or ""): float(value) for name, labels, value in METRIC_ROW.findall(text)}
    return {
        "gc": [rows.get(f'taskbeam_gc_collections_total{{generation="{g}"}}', 0) for g in range(3)],
        "gc_pause_s": [
            rows.get(f'taskbeam_gc_pause_seconds_total{{generation="{g}"}}', 0) for g in range(3)
        ],
        "mq_reads": rows.get("taskbeam_mq_reads_total", 0),
        "mq_messages": rows.get("taskbeam_mq_messages_total", 0),
        "delivered": rows.get("taskbeam_events_delivered_total", 0),
    }


class Sampler:
    """Every BUCKET_S, cumulative readings with their time, taken in a process of its
    own: in the load generator's, the GIL of its busy event loop delays them. The
    web's /metrics is scraped by a thread of its own there: a busy web answers late,
    and must not hold back the CPU readings."""

    def __init__(self, cgroups, loadgen_pids, metrics_url):
        self.args = (cgroups, loadgen_pids, metrics_url)
        self.stop, self.out = multiprocessing.Event(), multiprocessing.Queue()
        self.samples, self.scrapes = [], []
        self.process = multiprocessing.Process(target=self.run, daemon=True)

    def start(self):
        self.process.start()

    def join(self):
        self.stop.set()
        self.samples, self.scrapes = self.out.get(timeout=30)
        self.process.join(10)

    def run(self):
        cgroups, pids, url = self.args
        scrapes = []
        scraper = threading.Thread(target=self.scrape, args=(url, scrapes), daemon=True)
        scraper.start()
        samples = []
        for _ in self.ticks():
            cpu = {s: sum(cpu_seconds_of(p) for p in ps) for s, ps in cgroups.items()}
            cpu["loadgen"] = process_cpu(pids)
            samples.append({"t": time.time(), "cpu": cpu, "machine": machine_cpu()})
        scraper.join(5)
        self.out.put((samples, scrapes))

    def scrape(self, url, scrapes):
        for _ in self.ticks():
            started = time.time()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    web = web_counters(r.read().decode())
            except OSError:
                continue  # a missed scrape is a gap in those lanes, not a crash
            scrapes.append({"t": time.time(), "asked": started, "web": web})

    def ticks(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            yield
            next_at += BUCKET_S
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def health_checks(project, since, until):
    """Health checks (and any other exec) in the project's containers between two
    times, from Docker's event log: [{"service", "start", "end", "command"}]."""
    lines = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{until:.3f}",
            "--filter",
            "event=exec_start",
            "--filter",
            "event=exec_die",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--format",
            "{{json .}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    return execs([json.loads(line) for line in lines])


def execs(events):
    """Pair Docker's exec_start and exec_die events by exec id."""
    started, done = {}, []
    for event in events:
        attrs = event["Actor"]["Attributes"]
        at = event["timeNano"] / 1e9
        if event["Action"].startswith("exec_start"):
            started[attrs["execID"]] = {
                "service": attrs.get("com.docker.compose.service", attrs.get("name")),
                "start": at,
                "end": None,
                "command": event["Action"].split(": ", 1)[-1][:80],
            }
        elif event["Action"] == "exec_die" and attrs.get("execID") in started:
            started[attrs["execID"]]["end"] = at
            started[attrs["execID"]]["exit_code"] = int(attrs.get("exitCode", -1))
    done = sorted(started.values(), key=lambda e: e["start"])
    return done


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def buckets(receipts, samples, scrapes, start, end, bucket_s=BUCKET_S):
    """Per bucket of ``bucket_s`` from ``start`` to ``end``: latency of the events
    received in it, and the rates of the sampled counters over the sample interval
    that ends in it (CPU as % of one core, GC pauses in ms, messages per MQ read)."""
    count = int((end - start) / bucket_s + 0.5)
    rows = [
        {"t": round(i * bucket_s, 3), "events": 0, "latencies": [], "cpu_percent": {}}
        for i in range(count)
    ]

    def row_of(at):
        i = int((at - start) / bucket_s)
        return rows[i] if 0 <= i < count else None

    for at, ms in receipts:
        if row := row_of(at):
            row["events"] += 1
            row["latencies"].append(ms)
    for row in rows:
        lat = row.pop("latencies")
        row["p50_ms"] = round(percentile(lat, 0.5), 2) if lat else None
        row["p99_ms"] = round(percentile(lat, 0.99), 2) if lat else None
        row["max_ms"] = round(max(lat), 2) if lat else None
    cores = os.cpu_count() or 1
    for before, after in zip(samples, samples[1:]):
        if not (row := row_of(after["t"])):
            continue
        dt = after["t"] - before["t"]
        for name in after["cpu"]:
            used = after["cpu"][name] - before["cpu"][name]
            row["cpu_percent"][name] = round(used / dt * 100)
        busy = after["machine"][0] - before["machine"][0]
        total = after["machine"][1] - before["machine"][1]
        if total:
            machine = row["cpu_percent"]["machine"] = round(busy / total * 100 * cores)
            # Everything else: the kernel's own work, Docker, anyone else's processes.
            row["cpu_percent"]["other"] = machine - sum(
                v for k, v in row["cpu_percent"].items() if k != "machine"
            )
    for before, after in zip(scrapes, scrapes[1:]):
        if not (row := row_of(after["t"])):
            continue
        a, b = after["web"], before["web"]
        row["gc"] = [int(x - y) for x, y in zip(a["gc"], b["gc"])]
        row["gc_pause_ms"] = [
            round((x - y) * 1000, 2) for x, y in zip(a["gc_pause_s"], b["gc_pause_s"])
        ]
        reads = a["mq_reads"] - b["mq_reads"]
        row["mq_reads"] = int(reads)
        row["mq_batch"] = round((a["mq_messages"] - b["mq_messages"]) / reads, 1) if reads else None
        row["scrape_ms"] = round((after["t"] - after["asked"]) * 1000, 1)
    return rows


def spikes(rows, checks, start, limit_ms, bucket_s=BUCKET_S):
    """The buckets whose p99 passes ``limit_ms``, each with what ran in it or the
    bucket before: health checks, collections of generation 2, the busiest CPU."""
    found = []
    for i, row in enumerate(rows):
        if row["p99_ms"] is None or row["p99_ms"] < limit_ms:
            continue
        lo, hi = start + (i - 1) * bucket_s, start + (i + 1) * bucket_s
        near = [c["service"] for c in checks if c["start"] < hi and (c["end"] or c["start"]) >= lo]
        full_gc = sum((r.get("gc") or [0, 0, 0])[2] for r in rows[max(0, i - 1) : i + 1])
        found.append(
            {
                "t": row["t"],
                "p99_ms": row["p99_ms"],
                "health_checks": near,
                "full_gcs": full_gc,
                "cpu_percent": row["cpu_percent"],
            }
        )
    return found


def summary(rows, checks, start, limit_ms):
    """Counts for the report: how many spikes, and how many a check or a full GC met."""
    found = spikes(rows, checks, start, limit_ms)

    events = sum(r["events"] for r in rows)

    def cpu_s(name):
        return sum(r["cpu_percent"].get(name) or 0 for r in rows) / 100 * BUCKET_S

    def median(name):
        values = sorted(r["cpu_percent"][name] for r in rows if r["cpu_percent"].get(name))
        return values[len(values) // 2] if values else None

    return {
        "buckets": len(rows),
        "buckets_over_limit": len(found),
        "with_health_check": sum(1 for s in found if s["health_checks"]),
        "with_full_gc": sum(1 for s in found if s["full_gcs"]),
        "health_checks": len(checks),
        "full_gcs": sum((r.get("gc") or [0, 0, 0])[2] for r in rows),
        "gc_pause_ms": round(sum(sum(r.get("gc_pause_ms") or []) for r in rows), 1),
        "failed_health_checks": sum(1 for c in checks if c.get("exit_code")),
        "slowest_health_check_s": {
            c["service"]: round(
                max(
                    d["end"] - d["start"]
                    for d in checks
                    if d["service"] == c["service"] and d["end"]
                ),
                3,
            )
            for c in checks
            if c["end"]
        },
        "cpu_percent_median": {
            name: median(name) for name in (*SERVICES, "loadgen", "other", "machine")
        },
        # CPU per event: what a rate costs, steadier than one run's latency.
        "cpu_us_per_event": {
            name: round(cpu_s(name) / events * 1e6, 1) if events else None
            for name in (*SERVICES, "loadgen", "other", "machine")
        },
    }


def plot(timeline, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = timeline["buckets"]
    t = [r["t"] for r in rows]
    fig, (lat, cpu, gcx, mq) = plt.subplots(
        4, 1, figsize=(12, 9), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1, 1]}
    )
    for key, style in (("max_ms", ":"), ("p99_ms", "-"), ("p50_ms", "--")):
        lat.plot(t, [r[key] for r in rows], style, label=key[:-3])
    lat.axhline(timeline["p99_limit_ms"], color="red", lw=0.8)
    lat.set(ylabel="emit→receive ms", yscale="log")
    lat.set_title(
        f"{timeline['label']}: stock client, {timeline['rate']}/s offered, "
        f"{timeline['delivered_per_s']}/s delivered, p99 {timeline['p99_ms']} ms "
        f"(load {timeline['load']})"
    )
    lat.legend(loc="upper right", fontsize=8)
    for name in (*SERVICES, "loadgen", "other", "machine"):
        cpu.plot(t, [r["cpu_percent"].get(name) for r in rows], label=name, lw=1)
    cpu.set(ylabel="CPU % of a core")
    cpu.legend(loc="upper right", fontsize=7, ncol=7)
    for g, color in ((0, "#bbb"), (1, "orange"), (2, "red")):
        gcx.bar(
            t,
            [(r.get("gc_pause_ms") or [0, 0, 0])[g] for r in rows],
            width=0.09,
            color=color,
            label=f"gen {g}",
        )
    gcx.set(ylabel="GC pause ms")
    gcx.legend(loc="upper right", fontsize=7, ncol=3)
    mq.plot(t, [r.get("mq_batch") for r in rows], label="messages per read")
    mq.set(ylabel="MQ batch", xlabel="seconds")
    answer = mq.twinx()  # how late the web answers its /metrics: its event loop's delay
    answer.plot(t, [r.get("scrape_ms") for r in rows], color="grey", lw=0.8, label="/metrics ms")
    answer.set(ylabel="/metrics ms")
    mq.legend(handles=mq.lines + answer.lines, loc="upper right", fontsize=7)
    colors = {"web": "C0", "worker": "C1", "redis": "C2", "nginx": "C3"}
    for check in timeline["health_checks"]:
        x = check["start"] - timeline["start"]
        for ax in (lat, cpu, gcx, mq):
            ax.axvline(x, color=colors.get(check["service"], "k"), lw=0.8, alpha=0.6)
        lat.annotate(
            check["service"],
            (x, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            color=colors.get(check["service"], "k"),
        )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
