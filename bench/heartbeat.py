"""What Socket.IO's heartbeat costs the web per idle socket, at two settings (issue 35).

A web process of its own (Gunicorn with the image's config and worker, on a throwaway
Redis; no Docker), started with WEB_PING_INTERVAL_S/WEB_PING_TIMEOUT_S set, holds N idle
clients (bench/sioclient.py: they answer every ping) for SECONDS. The web's CPU time over
that window, less the same window with no client, per socket and minute. Settings are
interleaved round by round; the medians are printed.

    .venv/bin/python bench/heartbeat.py --clients 2000 --seconds 60 --rounds 3 \
        --settings 25/20 10/4 7/7
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import sioclient

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def cpu_seconds(pid):
    """User + system CPU time of ``pid`` and its children (Gunicorn's master, worker)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    total = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class Web:
    """``gunicorn 'taskbeam.web:create_app()'`` as web/start.sh runs it, on 127.0.0.1."""

    def __init__(self, redis_url, interval_s, timeout_s, workdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            SECRET_KEY=os.urandom(32).hex(),
            TASKBEAM_NAMESPACE="heartbeat",
            EXPORT_DIR=str(Path(workdir) / "exports"),
            WEB_CONNECTS_PER_S="0",  # the bench's connects are not a storm to refuse
            WEB_PING_INTERVAL_S=str(interval_s),
            WEB_PING_TIMEOUT_S=str(timeout_s),
            PYTHONPATH=str(ROOT),
        )
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.proc = subprocess.Popen(
            [str(gunicorn), "--config", str(ROOT / "web" / "gunicorn.conf.py")]
            + ["--bind", f"127.0.0.1:{self.port}", "taskbeam.web:create_app()"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(workdir) / f"web-{self.port}.log", "w"),  # noqa: SIM115
        )
        wait_for(lambda: answers(f"{self.url}/readyz"), 30, "the web to be ready")
        with urllib.request.urlopen(f"{self.url}/socket.io/?EIO=4&transport=polling") as r:
            opened = json.loads(r.read().decode()[1:])  # after engine.io's "0"
        told = (opened["pingInterval"], opened["pingTimeout"])
        if told != (interval_s * 1000, timeout_s * 1000):
            raise SystemExit(f"the web announced {told} ms, not {interval_s}/{timeout_s} s")

    def cpu_seconds(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


async def window(web, seconds):
    """The web's CPU seconds over ``seconds`` of wall time."""
    before = web.cpu_seconds()
    await asyncio.sleep(seconds)  # the measured window itself, not a synchronisation
    return web.cpu_seconds() - before


async def one_run(redis_url, setting, clients, seconds, workdir):
    interval_s, timeout_s = setting
    web = Web(redis_url, interval_s, timeout_s, workdir)
    try:
        idle = await window(web, seconds)
        cookie = sioclient.session_cookie(web.url)
        opened = []
        for start in range(0, clients, 200):
            opened += await asyncio.gather(
                *(
                    sioclient.Client(web.url, cookie).connect()
                    for _ in range(min(200, clients - start))
                )
            )
        # One whole ping cycle first: the connects' own work is done by then.
        await asyncio.sleep(interval_s + 1)
        busy = await window(web, seconds)
        alive = sum(not c.closed.is_set() for c in opened)
        await asyncio.gather(*(c.close() for c in opened))
    finally:
        web.stop()
    if alive != clients:
        raise SystemExit(f"{clients - alive} of {clients} sockets closed during the run")
    per_socket_ms = (busy - idle) / clients * 1000 * 60 / seconds
    return {"idle_s": idle, "busy_s": busy, "ms_per_socket_min": per_socket_ms}


async def main(args):
    settings = [tuple(int(x) for x in s.split("/")) for s in args.settings]
    results = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        redis = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            for round_ in range(args.rounds):
                for setting in settings:
                    row = await one_run(
                        f"redis://127.0.0.1:{port}/0", setting, args.clients, args.seconds, workdir
                    )
                    results[setting].append(row)
                    print(
                        f"round {round_ + 1} {setting[0]}/{setting[1]} s: web CPU "
                        f"{row['idle_s']:.2f} s idle, {row['busy_s']:.2f} s with "
                        f"{args.clients} sockets over {args.seconds} s: "
                        f"{row['ms_per_socket_min']:.3f} ms per socket per minute",
                        flush=True,
                    )
        finally:
            redis.terminate()
            redis.wait(10)
    print(f"\nmedians of {args.rounds}, {args.clients} idle sockets, {args.seconds} s windows")
    print("| ping interval/timeout | CPU ms per socket per minute | one core at 10,000 sockets |")
    print("|---|---|---|")
    for (interval_s, timeout_s), rows in results.items():
        ms = statistics.median(r["ms_per_socket_min"] for r in rows)
        core_pct = ms * 10_000 / 60_000 * 100
        print(f"| {interval_s} s / {timeout_s} s | {ms:.3f} | {core_pct:.2f} % |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["25/20", "10/4", "7/7"])
    asyncio.run(main(parser.parse_args()))
