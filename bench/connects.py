"""Web CPU per Socket.IO connect, fast transport against stock, interleaved.

Starts a Redis of its own and the real web (Gunicorn with web/gunicorn.conf.py's
worker class, the app from ``taskbeam.web:create_app()``) on 127.0.0.1, once with
``WEB_FAST_TRANSPORT=1`` and once with ``=0``, and in each round opens N
WebSocket-only clients (``EIO=4&transport=websocket``, a session cookie, the
Socket.IO CONNECT answered) and keeps them open: the web worker's CPU time
(``/proc/<pid>/stat``) over the opens, divided by N, and the wall time.
Rounds alternate between the two webs; medians of the rounds are printed.

    python bench/connects.py [--clients 1000] [--rounds 3] [--modes fast stock]
                             [--baseline DIR ...]

``--baseline DIR ...``: also the fast transport of other checkouts' sources (e.g.
``git archive main | tar -x -C DIR``), interleaved with these: before and after.
"""

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sioclient import Client, session_cookie

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 50  # connects in flight at once, as a storm of pages has


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(what)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def worker_pid(master: int) -> int:
    def child():
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = f.read().split()
        return int(pids[0]) if pids else None

    return wait_for(child, "gunicorn's worker")


class Web:
    """The real web process on a port of its own."""

    def __init__(self, redis_url: str, fast: bool, tree: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            SECRET_KEY=secrets.token_urlsafe(32),
            ALLOWED_HOSTS="127.0.0.1",
            ALLOWED_ORIGINS=self.url,
            WEB_FAST_TRANSPORT="1" if fast else "0",
            WEB_CONNECTS_PER_S="0",  # measure connects, not refusals
            TASKBEAM_NAMESPACE=f"bench{self.port}",
        )
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
        self.master = subprocess.Popen(
            [
                gunicorn,
                "--config",
                str(tree / "web" / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "taskbeam.web:create_app()",
            ],
            env=dict(env, PYTHONPATH=str(tree)),
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = worker_pid(self.master.pid)
        wait_for(
            lambda: urllib.request.urlopen(f"{self.url}/readyz", timeout=2).status == 200,
            "the web's /readyz",
        )

    def stop(self):
        self.master.terminate()
        self.master.wait(30)


async def open_clients(url: str, cookie: str, n: int) -> list[Client]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one():
        async with gate:
            return await Client(url, cookie).connect()

    return await asyncio.gather(*(one() for _ in range(n)))


async def round_of(web: Web, n: int) -> tuple[float, float]:
    """(web CPU ms per connect, seconds to open n)"""
    cookie = session_cookie(web.url)
    before, started = cpu_seconds(web.pid), time.monotonic()
    clients = await open_clients(web.url, cookie, n)
    elapsed, used = time.monotonic() - started, cpu_seconds(web.pid) - before
    await asyncio.gather(*(c.close() for c in clients))
    return used * 1000 / n, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["fast", "stock"], choices=["fast", "stock"])
    parser.add_argument(
        "--baseline",
        type=Path,
        nargs="*",
        default=[],
        help="other checkouts, each run with its fast transport",
    )
    args = parser.parse_args()
    trees = {mode: ROOT for mode in args.modes}
    for tree in args.baseline:
        trees[f"{tree.name}"] = tree
    args.modes = list(trees)
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    webs = {}
    try:
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        wait_for(lambda: socket.create_connection(("127.0.0.1", redis_port), 1), "redis")
        webs = {mode: Web(redis_url, mode != "stock", tree) for mode, tree in trees.items()}
        results = {mode: [] for mode in args.modes}
        for mode in args.modes:  # a warm-up round each: imports, first allocations
            asyncio.run(round_of(webs[mode], min(args.clients, 200)))
        for i in range(args.rounds):
            for mode in args.modes:
                cpu_ms, wall = asyncio.run(round_of(webs[mode], args.clients))
                results[mode].append((cpu_ms, wall))
                print(
                    f"round {i + 1} {mode}: {cpu_ms:.3f} ms CPU/connect, {wall:.2f} s to open "
                    f"{args.clients}",
                    flush=True,
                )
        for mode, rows in results.items():
            print(
                f"{mode}: median {statistics.median(r[0] for r in rows):.3f} ms CPU/connect, "
                f"{statistics.median(r[1] for r in rows):.2f} s to open {args.clients}"
            )
    finally:
        for web in webs.values():
            web.stop()
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
