"""Readings of the running Compose stack for the benchmarks (RSS, CPU time)."""

import json
import subprocess
from pathlib import Path


def compose(*args, **kwargs):
    return subprocess.run(
        ["docker", "compose", *args], capture_output=True, text=True, check=True, **kwargs
    ).stdout


def start_emit_driver(owner, tasks):
    """bench/emit_driver.py in a worker container, with ``tasks`` running tasks of
    ``owner``: the process (commands on its stdin) and the tasks' ids."""
    script = (Path(__file__).resolve().parent / "emit_driver.py").read_text()
    proc = subprocess.Popen(
        ["docker", "compose", "exec", "-T", "worker", "python", "-c", script, owner, str(tasks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, json.loads(proc.stdout.readline())["task_ids"]


def containers(service):
    return compose("ps", "-q", service).split()


def rss_kb(service):
    """Total RSS (KB) of every process in a service's containers."""
    total = 0
    for cid in containers(service):
        rows = subprocess.run(
            ["docker", "top", cid, "-o", "pid,rss"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[1:]
        total += sum(int(row.split()[1]) for row in rows)
    return total


def cpu_seconds(service):
    """CPU time used so far by a service's containers (cgroup v1, else v2)."""
    total = 0.0
    for cid in containers(service):
        v1 = subprocess.run(
            ["docker", "exec", cid, "cat", "/sys/fs/cgroup/cpuacct/cpuacct.usage"],
            capture_output=True,
            text=True,
        )
        if v1.returncode == 0:
            total += int(v1.stdout) / 1e9
            continue
        stat = subprocess.run(
            ["docker", "exec", cid, "cat", "/sys/fs/cgroup/cpu.stat"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        total += int(stat.split("usage_usec", 1)[1].split()[0]) / 1e6
    return total


def container_urls(service, port):
    """http://IP:port of each of a service's containers on its Compose network (the
    front one where it has several: web listens only there).

    The host reaches those addresses over Docker's bridge directly, without the
    userland proxy behind published ports.
    """
    urls = []
    for cid in containers(service):
        addresses = dict(
            item.rsplit("=", 1)
            for item in subprocess.run(
                [
                    "docker",
                    "inspect",
                    "-f",
                    "{{range $name, $net := .NetworkSettings.Networks}}"
                    "{{$name}}={{$net.IPAddress}} {{end}}",
                    cid,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        )
        front = [ip for name, ip in addresses.items() if name.endswith("_front")]
        urls.append(f"http://{(front or list(addresses.values()))[0]}:{port}")
    return urls


def container_url(service, port):
    """http://IP:port of a service's first container (:func:`container_urls`)."""
    return container_urls(service, port)[0]
