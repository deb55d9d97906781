"""`make bench`: delivery figures of the running stack, through Nginx.

By default every client connects to the Nginx container's address on the
Compose network: Docker's userland proxy behind the published port on loopback
is a process of its own that takes a CPU share per message (a load no browser
on another machine causes: that traffic is forwarded in the kernel) and gives
out at a few thousand connections. `--url` picks another address.

- latency: one client, events emitted one by one on the worker's real emit path
  (persist, then publish), emit→receive time from the event's own `ts`;
- fan-in: N clients each subscribed to its own task, at rising event rates: the
  highest delivered events/s with p99 < 100 ms and no loss, CPU per service and
  web CPU µs per delivered event; fed twice: `publish` (the external emitter
  alone, as Node's redis-emitter feeds socket.io: the web process's capacity)
  and `persist` (persist and publish: the whole path);
- stock fan-in (`--client stock`): the same steps (6 s each) measured the way a
  user's own load test would: a plain `websockets` client per socket
  (bench/stockclient.py) fed by a stock Flask-SocketIO external emitter
  through redis-py pipelines (bench/emit_driver.py's `stock` mode);
- connections: idle clients held by one web process, and its RSS per client;
- push vs 1-s polling for a 60-s task: requests and bytes;
- export rows/s and peak RSS (bench/export_bench.py).
Every figure but the last two is measured --runs times (default 3) and reported
as median [min-max]. `--client tuned` measures all but the stock fan-in, `stock`
only that, `both` (the default) everything. Prints a table, writes
bench/results/bench.json and a PNG plot.
- timeline (`--timeline RATE`): one stock-client step held at RATE for 10 s, per
  100-ms bucket next to what ran then (bench/timeline.py), instead of the rest.
    python bench/bench.py [--url URL] [--runs N] [--client C] [--smoke]
    python bench/bench.py --timeline RATE [--label NAME]
"""

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import stockclient
import timeline
from sioclient import Client, create_task, owner_of, session_cookie
from stack import (
    compose,
    container_url,
    container_urls,
    containers,
    cpu_seconds,
    rss_kb,
    start_emit_driver,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FAN_IN_RATES = [1000, 2000, 4000, 6000, 8000, 10000, 12000, 14000, 16000, 18000, 20000, 24000]
P99_LIMIT_MS = 100
STOCK_STEP_S = 6
TIMELINE_S = 10
# Where the worker's path publishes (emit_driver.py): in the Lua append, or after it.
PUBLISH = "in-append"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def spread(values):
    """Median and range of one figure over the runs."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def shown(figure, unit=""):
    if figure is None:
        return "n/a"
    return f"{figure['median']:g}{unit} [{figure['min']:g}-{figure['max']:g}]"


class Driver:
    """The event source inside a worker container (bench/emit_driver.py)."""

    def __init__(self, owner, tasks):
        self.proc, self.task_ids = start_emit_driver(owner, tasks)

    def run(self, rate, seconds, mode):
        self.proc.stdin.write(f"{rate} {seconds} {mode} {PUBLISH}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def channel(self, which):
        """``main``: every event on the main channel (every web reads it); ``rooms``."""
        self.proc.stdin.write(f"channel {which}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(60)


class Recorder:
    def __init__(self):
        self.latencies, self.seqs = [], {}

    def on_event(self, name, data):
        if name == "task_update" and data["message"] == "bench":
            self.latencies.append((time.time() - data["ts"]) * 1000)
            self.seqs.setdefault(data["task_id"], set()).add(data["seq"])

    def reset(self):
        self.latencies, self.seqs = [], {}


async def connect_all(url, cookie, count, on_event=None, batch=200):
    clients = []
    for start in range(0, count, batch):
        clients += await asyncio.gather(
            *(Client(url, cookie, on_event).connect() for _ in range(min(batch, count - start)))
        )
    return clients


async def subscribe_each(clients, task_ids, batch=100):
    pairs = list(zip(clients, task_ids))
    for start in range(0, len(pairs), batch):
        acks = await asyncio.gather(
            *(
                c.call("subscribe", {"task_id": t, "after": 0})
                for c, t in pairs[start : start + batch]
            )
        )
        assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]][:1]


async def latency(url, cookie, owner, events):
    recorder = Recorder()
    driver = await asyncio.to_thread(Driver, owner, 1)
    client = (await connect_all(url, cookie, 1, recorder.on_event))[0]
    await subscribe_each([client], driver.task_ids)
    rate = 200
    sent = await asyncio.to_thread(driver.run, rate, events / rate, "emit")
    await asyncio.sleep(1)
    await client.close()
    await asyncio.to_thread(driver.close)
    lat = recorder.latencies
    return {
        "emitted": sent["emitted"],  # fewer than asked when a busy machine slows the driver
        "events": len(lat),
        "p50_ms": round(percentile(lat, 0.5), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "max_ms": round(max(lat), 3),
        "cdf_ms": sorted(lat)[:: max(1, len(lat) // 200)],
    }


async def fan_in(url, cookie, owner, clients_count, rates, seconds, mode):
    """Rising rates until p99 passes the limit or an event is lost. Mode `stock`:
    the stock client and the stock emitter; the others: the tuned client."""
    recorder = Recorder()
    driver = await asyncio.to_thread(Driver, owner, clients_count)
    if mode == "stock":
        clients = await stockclient.start_all(url, cookie, driver.task_ids, recorder.on_event)
    else:
        clients = await connect_all(url, cookie, clients_count, recorder.on_event)
        await subscribe_each(clients, driver.task_ids)
        gc.freeze()  # the clients' long-lived state: keep full collections from pausing them
    steps = []
    for rate in rates:
        recorder.reset()
        cpu_before = {
            s: await asyncio.to_thread(cpu_seconds, s) for s in ("web", "worker", "redis", "nginx")
        }
        sent = await asyncio.to_thread(driver.run, rate, seconds, mode)
        await asyncio.sleep(1.5)  # let the last events arrive
        cpu = {
            s: round(await asyncio.to_thread(cpu_seconds, s) - cpu_before[s], 3) for s in cpu_before
        }
        delivered = sum(len(s) for s in recorder.seqs.values())
        step = {
            "offered_per_s": rate,
            "emitted": sent["emitted"],
            "emitted_per_s": round(sent["emitted"] / sent["seconds"]),
            "delivered": delivered,
            "delivered_per_s": round(delivered / sent["seconds"]),
            "lost": sent["emitted"] - delivered,
            "p50_ms": round(percentile(recorder.latencies, 0.5) or 0, 2),
            "p99_ms": round(percentile(recorder.latencies, 0.99) or 0, 2),
            "cpu_s": cpu,
            "cpu_percent": {k: round(v / sent["seconds"] * 100) for k, v in cpu.items()},
            "web_cpu_us_per_event": round(cpu["web"] / max(delivered, 1) * 1e6, 1),
        }
        steps.append(step)
        print(
            f"  fan-in {mode:>7} {rate:>6}/s: delivered {step['delivered_per_s']:>6}/s "
            f"p99 {step['p99_ms']:>8} ms lost {step['lost']} "
            f"web {step['web_cpu_us_per_event']} µs/event",
            flush=True,
        )
        if step["p99_ms"] >= P99_LIMIT_MS or step["lost"]:
            break
    await asyncio.gather(*(c.close() for c in clients))
    await asyncio.to_thread(driver.close)
    good = [s for s in steps if s["p99_ms"] < P99_LIMIT_MS and not s["lost"]]
    best = max(good, key=lambda s: s["delivered_per_s"], default=None)
    return {
        "mode": mode,
        "client": "stock" if mode == "stock" else "tuned",
        "publish": PUBLISH,
        "clients": clients_count,
        "seconds_per_step": seconds,
        "steps": steps,
        "max_delivered_per_s": best["delivered_per_s"] if best else 0,
        "web_cpu_us_per_event": best["web_cpu_us_per_event"] if best else None,
        "cpu_percent": best["cpu_percent"] if best else None,
    }


async def open_sockets(url, cookie, owner, count, tasks=1000):
    """Stock clients opened and subscribed (``count``, over ``tasks`` tasks), as many
    handshakes in flight as stockclient allows: seconds until every subscribe is
    acknowledged, and the web's CPU per client."""
    driver = await asyncio.to_thread(Driver, owner, min(tasks, count))
    task_ids = (driver.task_ids * (count // len(driver.task_ids) + 1))[:count]
    cpu_before = await asyncio.to_thread(cpu_seconds, "web")
    started = time.monotonic()
    clients = await stockclient.start_all(url, cookie, task_ids, lambda *_: None)
    seconds = time.monotonic() - started
    web_cpu = await asyncio.to_thread(cpu_seconds, "web") - cpu_before
    await asyncio.gather(*(c.close() for c in clients))
    await asyncio.to_thread(driver.close)
    row = {
        "clients": count,
        "seconds": round(seconds, 2),
        "web_cpu_us_per_client": round(web_cpu / count * 1e6),
    }
    print(
        f"  {count} stock clients connected and subscribed in {row['seconds']} s, "
        f"web CPU {row['web_cpu_us_per_client']} µs per client",
        flush=True,
    )
    return row


def listener_reads(urls):
    """Socket reads and the messages they brought, summed over the web replicas' /metrics."""
    total = {"reads": 0, "messages": 0}
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            rows = r.read().decode()
        for key in total:
            found = re.search(rf"^taskbeam_mq_{key}_total (\S+)", rows, re.M)
            total[key] += float(found.group(1)) if found else 0
    return total


def scale_web(replicas):
    compose("up", "-d", "--no-deps", "--wait", "--scale", f"web={replicas}", "web")
    # Nginx asks Docker's DNS for the replicas again after 5 s (resolver valid=5s).
    time.sleep(6)


async def web_scaling(url, cookie, owner, replicas_list, clients_count, rate, seconds):
    """The same load (stock clients, persist-fed: the worker's path) with 1, 2, 3...
    web replicas: total web CPU per delivered event, with each event on its room's
    channel (read by the replica holding the room) and on the main channel (read by
    every replica, as before room channels). On room channels also at a quarter of the
    rate: the marginal CPU per event between the two rates, without what each replica
    spends whatever the load (health checks, timers, pings of its sockets)."""
    rows = []
    try:
        for replicas in replicas_list:
            await asyncio.to_thread(scale_web, replicas)
            for channel, offered in (("rooms", rate // 4), ("rooms", rate), ("main", rate)):
                recorder = Recorder()
                driver = await asyncio.to_thread(Driver, owner, clients_count)
                await asyncio.to_thread(driver.channel, channel)
                clients = await stockclient.start_all(
                    url, cookie, driver.task_ids, recorder.on_event
                )
                urls = await asyncio.to_thread(container_urls, "web", 8000)
                reads_before = await asyncio.to_thread(listener_reads, urls)
                cpu_before = await asyncio.to_thread(cpu_seconds, "web")
                sent = await asyncio.to_thread(driver.run, offered, seconds, "persist")
                await asyncio.sleep(1.5)
                web_cpu = await asyncio.to_thread(cpu_seconds, "web") - cpu_before
                reads = await asyncio.to_thread(listener_reads, urls)
                delivered = sum(len(s) for s in recorder.seqs.values())
                await asyncio.gather(*(c.close() for c in clients))
                await asyncio.to_thread(driver.close)
                row = {
                    "web_replicas": replicas,
                    "channel": channel,
                    "offered_per_s": offered,
                    "delivered_per_s": round(delivered / sent["seconds"]),
                    "delivered": delivered,
                    "web_cpu_s": round(web_cpu, 3),
                    "lost": sent["emitted"] - delivered,
                    "p99_ms": round(percentile(recorder.latencies, 0.99) or 0, 2),
                    "web_cpu_us_per_event": round(web_cpu / max(delivered, 1) * 1e6, 1),
                    # Every replica reads every event on the main channel, only its own
                    # on room channels; fewer per read: each wake-up costs more per event.
                    "messages_read": int(reads["messages"] - reads_before["messages"]),
                    "messages_per_read": round(
                        (reads["messages"] - reads_before["messages"])
                        / max(reads["reads"] - reads_before["reads"], 1),
                        1,
                    ),
                }
                if channel == "rooms" and offered == rate:
                    low = rows[-1]
                    row["marginal_us_per_event"] = round(
                        (web_cpu - low["web_cpu_s"]) / max(delivered - low["delivered"], 1) * 1e6,
                        1,
                    )
                rows.append(row)
                print(
                    f"  web={replicas} {channel:>5} channel: delivered {row['delivered_per_s']}/s "
                    f"lost {row['lost']} p99 {row['p99_ms']} ms, web CPU "
                    f"{row['web_cpu_us_per_event']} µs/event (all replicas); messages read "
                    f"{row['messages_read']}, {row['messages_per_read']} per read"
                    + (
                        f"; marginal {row['marginal_us_per_event']} µs/event "
                        f"above {low['offered_per_s']}/s"
                        if "marginal_us_per_event" in row
                        else ""
                    ),
                    flush=True,
                )
    finally:
        await asyncio.to_thread(scale_web, 1)
    return rows


def inspect(cid, template):
    return subprocess.run(
        ["docker", "inspect", "-f", template, cid], capture_output=True, text=True, check=True
    ).stdout.strip()


async def timeline_step(url, cookie, owner, rate, label, clients_count):
    """One stock-client step held at ``rate``, recorded per 100 ms (timeline.py)."""
    receipts = timeline.Receipts()
    driver = await asyncio.to_thread(Driver, owner, clients_count)
    clients = await stockclient.start_all(url, cookie, driver.task_ids, receipts.on_event)
    await asyncio.to_thread(driver.run, 1000, 2, "stock")  # warm-up: first-use costs
    await asyncio.sleep(1.5)
    cgroups = {
        s: [timeline.cgroup_cpu_file(inspect(c, "{{.State.Pid}}")) for c in containers(s)]
        for s in timeline.SERVICES
    }
    project = inspect(containers("web")[0], '{{index .Config.Labels "com.docker.compose.project"}}')
    sampler = timeline.Sampler(cgroups, [os.getpid()], container_url("web", 8000) + "/metrics")
    receipts.rows.clear()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    start = time.time()
    sampler.start()
    sent = await asyncio.to_thread(driver.run, rate, TIMELINE_S, "stock")
    deadline = time.time() + 15  # an overloaded step drains for seconds: not lost, late
    while len(receipts.rows) < sent["emitted"] and time.time() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    end = time.time()
    await asyncio.to_thread(sampler.join)
    await asyncio.gather(*(c.close() for c in clients))
    await asyncio.to_thread(driver.close)
    checks = await asyncio.to_thread(timeline.health_checks, project, start, end)
    rows = timeline.buckets(receipts.rows, sampler.samples, sampler.scrapes, start, end)
    latencies = [ms for _, ms in receipts.rows]
    result = {
        "label": label,
        "rate": rate,
        "clients": clients_count,
        "seconds": TIMELINE_S,
        "load": load,
        "start": start,
        "emitted": sent["emitted"],
        "delivered": len(latencies),
        "delivered_per_s": round(len(latencies) / sent["seconds"]),
        "lost": sent["emitted"] - len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) or 0, 2),
        "p99_ms": round(percentile(latencies, 0.99) or 0, 2),
        "p99_limit_ms": P99_LIMIT_MS,
        "health_checks": checks,
        "buckets": rows,
        "spikes": timeline.spikes(rows, checks, start, P99_LIMIT_MS),
    }
    result["summary"] = timeline.summary(rows, checks, start, P99_LIMIT_MS)
    RESULTS.mkdir(exist_ok=True)
    result["plot"] = timeline.plot(result, RESULTS / f"timeline-{label}.png")
    (RESULTS / f"timeline-{label}.json").write_text(json.dumps(result, indent=1))
    print(
        f"timeline {label}: {rate}/s offered, {result['delivered_per_s']}/s delivered, "
        f"lost {result['lost']}, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
        f"(load {load})\n  {json.dumps(result['summary'])}",
        flush=True,
    )
    return result


async def connections(url, cookie, levels):
    base = await asyncio.to_thread(rss_kb, "web")
    held, rows = [], []
    for level in levels:
        try:
            held += await connect_all(url, cookie, level - len(held), batch=100)
        except Exception as exc:  # report how far it got rather than nothing
            rows.append(
                {
                    "clients": level,
                    "failed": f"{type(exc).__name__}: {exc}"[:200],
                    "connected": len(held),
                }
            )
            print(f"  {level:>6} idle clients: failed after {len(held)}: {exc}", flush=True)
            break
        await asyncio.sleep(2)
        rss = await asyncio.to_thread(rss_kb, "web")
        rows.append(
            {
                "clients": level,
                "web_rss_mb": round(rss / 1024, 1),
                "kb_per_client": round((rss - base) / level, 1),
            }
        )
        print(
            f"  {level:>6} idle clients: web RSS {rows[-1]['web_rss_mb']} MB, "
            f"{rows[-1]['kb_per_client']} KB/client",
            flush=True,
        )
    await asyncio.gather(*(c.close() for c in held))
    return {"web_rss_idle_mb": round(base / 1024, 1), "levels": rows}


async def push_vs_poll(url, cookie, seconds):
    """The same task watched by one socket and by 1-s polling: requests and bytes."""
    task = await asyncio.to_thread(create_task, url, cookie, steps=seconds, step_ms=1000)
    push_bytes = [0]

    def count(name, data):
        push_bytes[0] += len(json.dumps([name, data])) + 6  # "42" prefix + frame header

    client = (await connect_all(url, cookie, 1, count))[0]
    ack = await client.call("subscribe", {"task_id": task["id"], "after": 0})
    push_bytes[0] += len(json.dumps(ack)) + 8
    polls, poll_bytes = 0, 0
    while True:
        request = urllib.request.Request(
            f"{url}/api/tasks/{task['id']}", headers={"Cookie": cookie}
        )
        response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        body = response.read()
        polls += 1
        poll_bytes += len(body) + sum(len(k) + len(v) + 4 for k, v in response.headers.items())
        poll_bytes += 120 + len(cookie)  # request line and headers
        if json.loads(body)["state"] in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(1)
    await client.close()
    return {
        "task_seconds": seconds,
        "push": {"requests": 1, "bytes": push_bytes[0] + 600},  # + upgrade handshake
        "poll": {"requests": polls, "bytes": poll_bytes},
    }


def plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if result["latency"]["runs"]:
        cdf = result["latency"]["runs"][0]["cdf_ms"]
        left.plot(cdf, [i / len(cdf) for i in range(len(cdf))])
    left.set(title="Single client: emit → receive", xlabel="ms", ylabel="fraction")
    for mode, fan in result["fan_in"].items():
        steps = fan["runs"][0]["steps"]
        right.plot(
            [s["offered_per_s"] for s in steps],
            [s["delivered_per_s"] for s in steps],
            "o-",
            label=mode,
        )
    right.legend()
    right.set(
        title=f"{result['fan_in_clients']} clients: throughput",
        xlabel="offered events/s",
        ylabel="delivered events/s",
    )
    fig.tight_layout()
    fig.savefig(path)
    return str(path)


def machine():
    return {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        ),
        "docker": compose("version", "--short").strip(),
        "transport": transport(),
    }


def transport():
    """Which WebSocket transport the web runs (WEB_FAST_TRANSPORT, and its fallback)."""
    try:
        with urllib.request.urlopen(container_url("web", 8000) + "/metrics", timeout=5) as r:
            rows = r.read().decode()
    except OSError as exc:
        return f"unknown ({exc})"
    fast = re.search(r"^taskbeam_fast_transport (\d)", rows, re.M)
    return "unknown" if fast is None else ("fast" if fast.group(1) == "1" else "stock")


def kb_per_client(runs, level):
    return spread(
        [
            row.get("kb_per_client")
            for run in runs
            for row in run["levels"]
            if row["clients"] == level
        ]
    )


def summarise(result):
    lat = result["latency"]
    result["summary"] = summary = {
        "single_client_p50_ms": spread([r["p50_ms"] for r in lat["runs"]]),
        "single_client_p99_ms": spread([r["p99_ms"] for r in lat["runs"]]),
        # The first run grows a fresh heap; later runs reuse what it freed.
        "connections_kb_per_client_fresh": {
            str(level): kb_per_client(result["connections"]["runs"][:1], level)
            for level in result["connections"]["levels"]
        },
        "connections_kb_per_client_warm": {
            str(level): kb_per_client(result["connections"]["runs"][1:], level)
            for level in result["connections"]["levels"]
        },
    }
    opened = result["open_sockets"]["runs"]
    summary["open_sockets_seconds"] = spread([r["seconds"] for r in opened])
    summary["open_sockets_web_cpu_us_per_client"] = spread(
        [r["web_cpu_us_per_client"] for r in opened]
    )
    scaling, marginal = {}, {}
    rate = result["web_scaling"]["rate"]
    for run in result["web_scaling"]["runs"]:
        for row in run:
            if row["offered_per_s"] != rate:
                continue
            key = f"web={row['web_replicas']} {row['channel']}"
            scaling.setdefault(key, []).append(row["web_cpu_us_per_event"])
            if "marginal_us_per_event" in row:
                marginal.setdefault(key, []).append(row["marginal_us_per_event"])
    summary["web_scaling_cpu_us_per_event"] = {k: spread(v) for k, v in scaling.items()}
    summary["web_scaling_marginal_us_per_event"] = {k: spread(v) for k, v in marginal.items()}
    for mode, fan in result["fan_in"].items():
        summary[f"fan_in_{mode}_events_per_s"] = spread(
            [r["max_delivered_per_s"] for r in fan["runs"]]
        )
        summary[f"fan_in_{mode}_web_cpu_us_per_event"] = spread(
            [r["web_cpu_us_per_event"] for r in fan["runs"]]
        )
        summary[f"fan_in_{mode}_cpu_percent"] = {
            service: spread([(r["cpu_percent"] or {}).get(service) for r in fan["runs"]])
            for service in ("web", "worker", "redis", "nginx")
        }


def report(result):
    s = result["summary"]
    print(
        f"\nmedian [min-max] of {result['runs']} run(s), {result['machine']['cores']} cores, "
        f"{result['machine']['transport']} WebSocket transport"
    )
    if result["latency"]["runs"]:
        print(
            f"single client        p50 {shown(s['single_client_p50_ms'], ' ms')}  "
            f"p99 {shown(s['single_client_p99_ms'], ' ms')}"
        )
    for mode in result["fan_in"]:
        client = "stock client + stock emitter" if mode == "stock" else "tuned client"
        cpu = s[f"fan_in_{mode}_cpu_percent"]
        print(
            f"fan-in {mode:<8}      {shown(s[f'fan_in_{mode}_events_per_s'])} events/s "
            f"with p99 < {P99_LIMIT_MS} ms, {result['fan_in_clients']} clients ({client}); web "
            f"{shown(s[f'fan_in_{mode}_web_cpu_us_per_event'], ' µs')} CPU per event; CPU % "
            + ", ".join(f"{k} {shown(v)}" for k, v in cpu.items())
        )
    if result["open_sockets"]["runs"]:
        print(
            f"open {result['open_sockets']['runs'][0]['clients']} sockets  connected and "
            f"subscribed in {shown(s['open_sockets_seconds'], ' s')}, web CPU "
            f"{shown(s['open_sockets_web_cpu_us_per_client'], ' µs')} per client (stock client)"
        )
    for key, figure in s["web_scaling_cpu_us_per_event"].items():
        marginal = s["web_scaling_marginal_us_per_event"].get(key)
        print(
            f"{key:<20} web CPU per delivered event (all replicas) {shown(figure, ' µs')} "
            f"at {result['web_scaling']['rate']}/s persist-fed, stock clients"
            + (f"; marginal {shown(marginal, ' µs')}" if marginal else "")
        )
    for level, fresh in s["connections_kb_per_client_fresh"].items():
        if not result["connections"]["runs"]:
            break
        print(
            f"connections {level:>6}  web RSS per idle client: {shown(fresh, ' KB')} "
            f"in a fresh process, {shown(s['connections_kb_per_client_warm'][level], ' KB')}"
            " once warm"
        )
    if "push_vs_poll" in result:
        pp = result["push_vs_poll"]
        print(
            f"push vs poll         push {pp['push']['requests']} req / {pp['push']['bytes']} B, "
            f"poll {pp['poll']['requests']} req / {pp['poll']['bytes']} B "
            f"({pp['task_seconds']} s task)"
        )
    if "export" in result:
        print(f"export               {json.dumps(result['export'])}")


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.url = args.url or await asyncio.to_thread(container_url, "nginx", 8080)
    print(f"through Nginx at {args.url}", flush=True)
    cookie = await asyncio.to_thread(session_cookie, args.url)
    owner = owner_of(cookie)
    smoke = args.smoke
    runs = 1 if smoke else args.runs
    global PUBLISH
    PUBLISH = "after-append" if args.publish_after_append else "in-append"
    if args.timeline:
        return await timeline_step(
            args.url, cookie, owner, args.timeline, args.label, 20 if smoke else 1000
        )
    tuned, stock = args.client in ("tuned", "both"), args.client in ("stock", "both")
    modes = (args.modes if tuned else []) + (["stock"] if stock else [])
    clients = 20 if smoke else 1000
    levels = [100] if smoke else [1000, 5000, 10000]
    result = {
        "machine": machine(),
        "url": args.url,
        "smoke": smoke,
        "runs": runs,
        "fan_in_clients": clients,
        "latency": {"runs": []},
        "client": args.client,
        "publish": PUBLISH,
        "fan_in": {m: {"runs": []} for m in modes},
        "connections": {"levels": levels, "runs": []},
        "web_scaling": {"rate": args.scaling_rate, "runs": []},
        "open_sockets": {"runs": []},
    }
    for run in range(1, runs + 1):
        if tuned:
            print(f"run {run}/{runs}: latency …", flush=True)
            result["latency"]["runs"].append(
                await latency(args.url, cookie, owner, 200 if smoke else 2000)
            )
        for mode in modes:
            step_s = STOCK_STEP_S if mode == "stock" else 5
            result["fan_in"][mode]["runs"].append(
                await fan_in(
                    args.url,
                    cookie,
                    owner,
                    clients,
                    [200] if smoke else FAN_IN_RATES,
                    2 if smoke else step_s,
                    mode,
                )
            )
        if stock:
            print(f"run {run}/{runs}: opening sockets …", flush=True)
            result["open_sockets"]["runs"].append(
                await open_sockets(args.url, cookie, owner, 100 if smoke else 10000)
            )
        if args.web_scaling:
            print(f"run {run}/{runs}: web replicas {args.web_scaling} …", flush=True)
            result["web_scaling"]["runs"].append(
                await web_scaling(
                    args.url,
                    cookie,
                    owner,
                    args.web_scaling,
                    clients,
                    200 if smoke else args.scaling_rate,
                    2 if smoke else 10,
                )
            )
        if tuned and not args.skip_extras:
            print(f"run {run}/{runs}: connections …", flush=True)
            result["connections"]["runs"].append(await connections(args.url, cookie, levels))
    if tuned and not smoke and not args.skip_extras:
        print("push vs poll (60 s) …", flush=True)
        try:
            result["push_vs_poll"] = await push_vs_poll(args.url, cookie, 60)
        except Exception as exc:  # keep the figures of the runs above rather than none
            result["push_vs_poll_failed"] = f"{type(exc).__name__}: {exc}"[:200]
            print(f"  push vs poll failed: {exc}", flush=True)
        result["export"] = json.loads(
            compose(
                "exec", "-T", "worker", "python", "-", input=(HERE / "export_bench.py").read_text()
            )
        )
    summarise(result)
    RESULTS.mkdir(exist_ok=True)
    result["plot"] = plot(result, RESULTS / "bench.png")
    (RESULTS / "bench.json").write_text(json.dumps(result, indent=1))
    report(result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="default: the Nginx container's address")
    parser.add_argument("--runs", type=int, default=3, help="repeat the measured parts")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["publish", "persist"],
        choices=["publish", "persist"],
        help="fan-in feeds (see above)",
    )
    parser.add_argument(
        "--client",
        default="both",
        choices=["tuned", "stock", "both"],
        help="tuned: our client, every figure; stock: a plain websockets client fed by a "
        "stock emitter, fan-in only; both (default)",
    )
    parser.add_argument(
        "--publish-after-append",
        action="store_true",
        help="the worker's path publishes after the Lua append (two round trips, the path "
        "of a writer that waits for replicas) instead of inside it",
    )
    parser.add_argument(
        "--skip-extras",
        action="store_true",
        help="latency and fan-in only: no connections, push-vs-poll or export figures",
    )
    parser.add_argument(
        "--web-scaling",
        nargs="*",
        type=int,
        default=[],
        metavar="N",
        help="also measure web CPU per event with N web replicas each (e.g. 1 2 3), "
        "events on room channels and on the main channel; scales web back to 1",
    )
    parser.add_argument("--scaling-rate", type=int, default=4000, help="events/s of --web-scaling")
    parser.add_argument(
        "--timeline",
        type=int,
        metavar="RATE",
        help="only one stock-client step held at RATE events/s, per 100 ms next to CPU, "
        "GC, health checks and listener reads (bench/timeline.py)",
    )
    parser.add_argument(
        "--label", default="run", help="--timeline's files: results/timeline-LABEL.json/.png"
    )
    parser.add_argument("--smoke", action="store_true", help="a small, fast run")
    asyncio.run(main(parser.parse_args()))
