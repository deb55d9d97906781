"""Soak: 1,000 idle sockets plus 50 concurrent tasks for a bounded time (`make soak`).

Against the running stack, loopback only (with `make up` defaults one worker runs
4 tasks at a time, so most of the 50 wait in the queue; `make scale N=3` runs 12).
Every finished task must have been seen
gapless with exactly one terminal event; the RSS of the web and worker processes
is sampled and its slope reported. Prints a summary and writes JSON.
    python bench/soak.py [--seconds 180] [--idle 1000] [--tasks 50]
"""

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

from sioclient import Client, create_task, session_cookie
from stack import rss_kb

TERMINAL = {"succeeded", "failed", "cancelled"}
RESULTS = Path(__file__).resolve().parent / "results"


def slope_kb_per_min(samples):
    """Least-squares slope of (seconds, KB) samples, in KB per minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples) or 1
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


async def soak(base_url, seconds, idle, concurrent):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cookie = await asyncio.to_thread(session_cookie, base_url)
    events = {}
    errors = []

    def on_event(name, data):
        if name == "task_update":
            events.setdefault(data["task_id"], {})[data["seq"]] = data["state"]

    idle_clients = []
    for i in range(0, idle, 100):
        idle_clients += await asyncio.gather(
            *(Client(base_url, cookie).connect() for _ in range(min(100, idle - i)))
        )
    # Task creation is rate-limited per session: spread the tasks over owners,
    # each with a watching socket, at five concurrent tasks (~50/min) apiece.
    owners = []
    for _ in range(max(1, concurrent // 5)):
        owner_cookie = await asyncio.to_thread(session_cookie, base_url)
        owners.append((owner_cookie, await Client(base_url, owner_cookie, on_event).connect()))
    started, samples, finished = time.monotonic(), [], set()
    running = set()

    async def start_one(n):
        owner_cookie, watcher = owners[n % len(owners)]
        task = await asyncio.to_thread(create_task, base_url, owner_cookie, steps=20, step_ms=300)
        ack = await watcher.call("subscribe", {"task_id": task["id"], "after": 0})
        for event in ack["missed"]:
            on_event("task_update", event)
        running.add(task["id"])

    next_sample = 0.0
    while (elapsed := time.monotonic() - started) < seconds:
        for task_id in list(running):
            if TERMINAL & set(events.get(task_id, {}).values()):
                running.discard(task_id)
                finished.add(task_id)
        try:
            await asyncio.gather(
                *(start_one(len(running) + n) for n in range(concurrent - len(running)))
            )
        except Exception as exc:  # counted, and the soak goes on
            errors.append(repr(exc))
        if elapsed >= next_sample:
            samples.append(
                (
                    elapsed,
                    await asyncio.to_thread(rss_kb, "web"),
                    await asyncio.to_thread(rss_kb, "worker"),
                )
            )
            next_sample += 10
        await asyncio.sleep(0.5)
    # Drain: tasks queued behind the workers' capacity still have to finish.
    deadline = time.monotonic() + 240
    while running and time.monotonic() < deadline:
        for task_id in list(running):
            if TERMINAL & set(events.get(task_id, {}).values()):
                running.discard(task_id)
                finished.add(task_id)
        await asyncio.sleep(0.5)

    bad = []
    for task_id in finished:
        seqs = events[task_id]
        states = [seqs[s] for s in sorted(seqs)]
        if sorted(seqs) != list(range(1, len(seqs) + 1)) or sum(s in TERMINAL for s in states) != 1:
            bad.append(task_id)
    dropped = sum(c.closed.is_set() for c in idle_clients)
    await asyncio.gather(*(c.close() for c in idle_clients + [w for _, w in owners]))
    return {
        "seconds": seconds,
        "idle_sockets": idle,
        "concurrent_tasks": concurrent,
        "tasks_finished": len(finished),
        "tasks_unfinished": len(running),
        "tasks_with_lost_events": len(bad),
        "errors": errors[:10],
        "error_count": len(errors),
        "idle_sockets_dropped": dropped,
        "web_rss_mb": [round(s[1] / 1024, 1) for s in samples],
        "worker_rss_mb": [round(s[2] / 1024, 1) for s in samples],
        "web_rss_slope_kb_per_min": round(slope_kb_per_min([(t, w) for t, w, _ in samples]), 1),
        "worker_rss_slope_kb_per_min": round(slope_kb_per_min([(t, k) for t, _, k in samples]), 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(soak(args.url, args.seconds, args.idle, args.tasks))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    ok = not (
        result["tasks_with_lost_events"]
        or result["error_count"]
        or result["tasks_unfinished"]
        or result["idle_sockets_dropped"]
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
