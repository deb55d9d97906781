"""High availability (redis/ha.yml): Redis faults on a primary, two replicas and three
Sentinels, with ten running tasks watched by ten reconnecting clients, as in
test_chaos.py. Every task must reach exactly one terminal event, gapless, and every
event a client received must be in the final stored history, unchanged.

``failover s`` is measured by a prober on the project's network that writes through
the Sentinels as the store does (a write, then WAIT for one replica) every 50 ms: the
longest time without an accepted write after the fault, so refused writes and a write
stuck while the client looks for the primary both count.

Runs only on the HA stack (tests/run.sh's HA pass sets TEST_HA_STACK=1, and
TEST_REDIS_TLS_DIR: the pass runs over TLS, redis/ha-tls.yml); the rows run
in order, each starting from a healthy set of three data nodes and three Sentinels.
"""

import os
import subprocess
import threading
import time

import pytest
from conftest import (
    Api,
    compose,
    docker,
    project_env,
    record_chaos_row,
    start_watched_tasks,
    stored_history,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("TEST_HA_STACK") != "1", reason="needs the HA stack (tests/run.sh HA pass)"
)

TASKS = 10
DATA_NODES = ("redis", "redis-2", "redis-3")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "taskbeam-test")
NETWORK = f"{PROJECT}_redis-ha"  # redis/ha.yml: fixed addresses from .11
# Set when the pass runs over TLS (redis/ha-tls.yml): the certificates' folder.
TLS_DIR = os.environ.get("TEST_REDIS_TLS_DIR", "")


def address(service):
    net = project_env().get("REDIS_HA_NET") or "10.218.18"
    return f"{net}.{11 + DATA_NODES.index(service)}"


PROBE = """
import sys, time
from redis.backoff import NoBackoff
from redis.retry import Retry
from taskbeam import sentinel
url = sys.argv[1]
client = None
end = time.time() + 600
while time.time() < end:
    try:
        if client is None:
            # No retries inside redis-py: they would hide a refused write.
            client = sentinel.master_client(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                            retry=Retry(NoBackoff(), 0),
                                            **sentinel.tls_options(url, "/tls/ca.pem"))
        pipe = client.pipeline(transaction=False)
        pipe.set("taskbeam-ha-probe", time.time())
        pipe.execute_command("WAIT", 1, 500)
        ok = pipe.execute()[1] >= 1
    except Exception:
        ok, client = False, None
    print(f"{time.time():.3f} {int(ok)}", flush=True)
    time.sleep(0.05)
"""


class Prober:
    """Writes as the store does, every 50 ms, from a container on the project's network."""

    def __init__(self):
        env = project_env()
        tls = ["-v", f"{TLS_DIR}:/tls:ro"] if TLS_DIR else []
        url = (
            f"{'rediss' if TLS_DIR else 'redis'}+sentinel://:{env['REDIS_PASSWORD']}@"
            + ",".join(f"{s}:26379" for s in SENTINELS)
            + "/0/taskbeam"
        )
        tag = env.get("IMAGE_TAG") or "latest"
        self.name = f"{PROJECT}-ha-probe"
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
        self.proc = subprocess.Popen(
            ["docker", "run", "--rm", "--name", self.name, "--network", NETWORK, *tls,
             "--entrypoint", "python", f"taskbeam-app:{tag}", "-c", PROBE, url],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.samples = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: any(ok for _, ok in self.samples), 60, what="the prober's first write")

    def _read(self):
        for line in self.proc.stdout:
            t, ok = line.split()
            self.samples.append((float(t), ok == "1"))

    def failover_s(self, since):
        """The longest time after ``since`` between two accepted writes (counted from
        the last one before it). A sample's time is when its attempt ended, so an
        attempt that hangs until the new primary answers shows as a gap too (it once
        hid the whole failover: no refused write was ever printed)."""
        assert self.samples and self.samples[-1][1], (
            f"the prober stopped or cannot write: {self.samples[-3:]}"
        )
        accepted = [t for t, ok in self.samples if ok]
        times = [t for t in accepted if t < since][-1:] + [t for t in accepted if t >= since]
        return round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 1)

    def close(self):
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def prober():
    p = Prober()
    yield p
    p.close()


def container(service):
    ids = compose("ps", "-a", "-q", service).split()
    assert len(ids) == 1, (service, ids)
    return ids[0]


def exec_in(service, *argv):
    """Output of ``argv`` run in ``service``'s container; None if it is not running
    or did not answer within 10 s (a busy machine)."""
    try:
        done = subprocess.run(
            ["docker", "exec", container(service), *argv],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    return done.stdout + done.stderr if done.returncode == 0 else None


def redis_cli(service, *args):
    """redis-cli in ``service``'s container, over TLS where it has CLI_TLS (ha-tls.yml)."""
    return exec_in(service, "sh", "-c", 'exec redis-cli ${CLI_TLS:-} "$@"', "redis-cli", *args)


def sentinel_says(*args, among=SENTINELS):
    """The first answer of a running Sentinel."""
    for name in among:
        out = redis_cli(name, "-p", "26379", *args)
        if out and out.strip():
            return out.split()
    return [None]


def primary(among=SENTINELS):
    """The data node the Sentinels name as primary."""
    ip = sentinel_says("SENTINEL", "get-master-addr-by-name", "taskbeam", among=among)[0]
    return next((s for s in DATA_NODES if address(s) == ip), None)


def role(service):
    out = redis_cli(service, "ROLE")
    return out.split()[0] if out else None


def write_refused(service):
    return "READONLY" in (redis_cli(service, "SET", "taskbeam-ha-split", "1") or "")


def rejoined(service):
    """``service`` runs again as a replica of the current primary and refuses writes."""
    wait_until(
        lambda: role(service) == "slave" and write_refused(service),
        90,
        interval=0.5,
        what=f"{service} to rejoin as a replica",
    )
    new = primary()
    assert new != service
    wait_until(
        lambda: f"ip={address(service)}," in (redis_cli(new, "INFO", "replication") or ""),
        60,
        interval=0.5,
        what=f"{new} to list {service} as its replica",
    )


def failed_over(old, among=SENTINELS):
    wait_until(
        lambda: (p := primary(among)) and p != old and role(p) == "master",
        60,
        interval=0.2,
        what=f"a replica of {old} to be promoted",
    )


def kill_primary(ctx):
    ctx["old"] = primary()
    docker("kill", container(ctx["old"]))
    failed_over(ctx["old"])


def primary_back(ctx):
    # The primary killed by the previous row (or any stopped data node) starts again.
    for service in DATA_NODES:
        if role(service) is None:
            docker("start", container(service))
            rejoined(service)


def kill_sentinel_then_primary(ctx):
    docker("kill", container(SENTINELS[0]))
    ctx["old"] = primary(among=SENTINELS[1:])
    docker("kill", container(ctx["old"]))
    failed_over(ctx["old"], among=SENTINELS[1:])


def create_when_replicated(api, timeout=15, **params):
    """A task created, tried again after a 503 ("try again"): the first writes after
    a failover wait until the new primary's replica has caught up."""

    def attempt():
        response = api.request("POST", "/api/tasks", json={"kind": "simulate", "params": params})
        assert response.status_code in (202, 503), response.text
        return response.json() if response.status_code == 202 else None

    return wait_until(attempt, timeout, interval=0.5, what="a task created after the failover")


def partition_primary(ctx):
    ctx["old"] = primary()
    docker("network", "disconnect", NETWORK, container(ctx["old"]))
    try:
        failed_over(ctx["old"])  # longer than the Sentinels' down-after time
        # New work must not wait for the old primary: a connection to it never answers
        # again (no reset comes through a partition), so the web's producer and every
        # worker's consumer must give it up and ask the Sentinels.
        api = ctx["api"]
        task = create_when_replicated(api, steps=2, step_ms=50)
        wait_until(
            lambda: api.snapshot(task["id"])["state"] == "succeeded",
            30,
            interval=0.5,
            what="a task created after the failover to run while the old primary is cut off",
        )
    finally:
        docker("network", "connect", "--ip", address(ctx["old"]), "--alias", ctx["old"],
               NETWORK, container(ctx["old"]))  # fmt: skip
    rejoined(ctx["old"])


FAULTS = {
    "HA kill primary": kill_primary,
    "HA old primary back": primary_back,
    "HA sentinel+primary": kill_sentinel_then_primary,
    "HA partition primary": partition_primary,
}


def restore():
    """Every data node and Sentinel running again, the stopped ones rejoined."""
    for service in SENTINELS:
        if docker("inspect", "-f", "{{.State.Running}}", container(service)).strip() != "true":
            docker("start", container(service))
    primary_back({})


def test_sentinels_refuse_commands_without_the_password():
    # Over TLS in the HA pass (ha-tls.yml): a client with the CA but no password.
    anonymous = 'unset REDISCLI_AUTH; exec redis-cli ${CLI_TLS:-} -p 26379 "$@"'
    for name in SENTINELS:
        done = subprocess.run(
            ["docker", "exec", container(name), "sh", "-c", anonymous, "redis-cli",
             "SENTINEL", "MONITOR", "evil", "127.0.0.1", "6379", "1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "NOAUTH" in done.stdout + done.stderr, (name, done)
    assert sentinel_says("SENTINEL", "MASTERS")[1] == "taskbeam"  # with it: answered


@pytest.mark.parametrize("fault", list(FAULTS))
def test_ha_every_task_ends_once_and_nothing_seen_is_lost(fault, prober):
    api = Api()
    watchers = []
    try:
        tasks = start_watched_tasks(api, watchers, TASKS)
        ctx = {"api": api}
        fault_at = time.time()
        FAULTS[fault](ctx)
        for watcher, task in zip(watchers, tasks):
            try:
                watcher.wait_terminal([task["id"]], timeout=180)
            except AssertionError as exc:
                # Which side lost it: the store (no terminal event) or the client.
                stored = stored_history(api, task["id"])
                raise AssertionError(
                    f"{exc}; the client's last seq {watcher.last_seq(task['id'])} "
                    f"({watcher.connects} connects, connected now: {watcher.sio.connected}, "
                    f"resubscribes that failed: {watcher.resubscribe_failures[-3:]}), "
                    f"the store's last event {stored[-1:]}"
                ) from None

        row, watched = record_chaos_row(
            fault, watchers, tasks, None, failover_s=prober.failover_s(fault_at)
        )
        stored = {t["id"]: stored_history(api, t["id"]) for t in tasks}
        # Every event a client received is in the final history, as it was received.
        changed = [(i, e) for i, h in watched.items() for e in h if e not in stored[i]]

        assert row["terminal"] == TASKS and row["gaps"] == 0, row
        # A primary lost is a failover the prober sees (it writes every 50 ms; the
        # Sentinels wait 2 s before they call a primary down).
        assert fault == "HA old primary back" or row["failover s"] >= 1, row
        assert not changed, f"events received but not in the stored history: {changed[:3]}"
        for history in stored.values():
            assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
            assert history[-1]["state"] == "succeeded", (fault, history[-1])
    finally:
        for watcher in watchers:
            watcher.close()
        api.http.close()
        if fault != "HA kill primary":  # the next row brings that primary back itself
            restore()
