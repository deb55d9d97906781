"""The stack on a two-node Docker Swarm (deploy/swarm/stack.yml), run by tests/swarm/run.sh,
which builds the swarm from two engines in containers and sets SWARM_* (skipped otherwise).

Tasks run by both nodes' workers reach browser-like clients gaplessly; an export written
on one node downloads through Nginx on the other; a rolling update of `web`, draining
the second node mid-task and losing it outright lose nothing: the chaos table's checks,
printed as its rows."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    TERMINAL,
    Api,
    Watcher,
    assert_gapless_single_terminal,
    is_ready,
    record_chaos_row,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    "SWARM_MANAGER" not in os.environ, reason="runs on the swarm of tests/swarm/run.sh"
)
MANAGER = os.environ.get("SWARM_MANAGER", "")
NODES = os.environ.get("SWARM_NODES", "").split()
STACK = os.environ.get("SWARM_STACK", "taskbeam")
SERVICES = ("redis", "web", "worker", "nginx")
TASKS = 10  # as in test_chaos.py


def on(node, *args, timeout=60):
    """`docker ARGS` on a swarm node's own engine (the node is a container here)."""
    done = subprocess.run(
        ["docker", "exec", node, "docker", *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} on {node} failed: {done.stderr}")
    return done.stdout


def worker_nodes():
    """Worker container hostname (a snapshot's ``worker``) -> the swarm node running it."""
    found = {}
    for node in NODES:
        ids = on(
            node,
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.swarm.service.name={STACK}_worker",
        ).split()
        for container in ids:
            found[on(node, "inspect", "-f", "{{.Config.Hostname}}", container).strip()] = node
    return found


def node_name(node_container):
    return on(node_container, "info", "-f", "{{.Name}}").strip()


def converged():
    """/readyz answers and every service runs as many tasks as it wants. (`service ls`
    alone would count the tasks of a lost node, still "running" in its last report.)"""
    if not is_ready():
        return False
    services = on(
        MANAGER,
        "service",
        "ls",
        "--filter",
        f"label=com.docker.stack.namespace={STACK}",
        "--format",
        "{{.Name}} {{.Replicas}}",
    ).splitlines()
    for line in services:
        name, replicas = line.split()[:2]
        states = on(
            MANAGER,
            "service",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
            name,
        ).splitlines()
        if sum(s.startswith("Running") for s in states) != int(replicas.split("/")[1]):
            return False
    return True


def watched_tasks(api, count, steps=30, step_ms=300):
    tasks = [api.create(steps=steps, step_ms=step_ms) for _ in range(count)]
    watchers = []
    for task in tasks:
        watcher = Watcher(api).connect()
        watcher.follow(task["id"])
        watchers.append(watcher)
    return tasks, watchers


def service_spec(service):
    return json.loads(on(MANAGER, "service", "inspect", f"{STACK}_{service}"))[0]["Spec"]


def compose_environment(service):
    """The environment docker-compose.yml gives ``service`` (placeholder secrets)."""
    done = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={
            "PATH": os.environ["PATH"],
            **{
                name: "x"
                for name in (
                    "SECRET_KEY",
                    "REDIS_PASSWORD",
                    "REDIS_WEB_PASSWORD",
                    "REDIS_WORKER_PASSWORD",
                    "REDIS_FLOWER_PASSWORD",
                )
            },
        },
    )
    return json.loads(done.stdout)["services"][service]["environment"]


def test_the_stack_has_the_compose_settings_with_secrets_in_files():
    # The settings file tests/swarm/run.sh deployed with (its last value of each wins).
    lines = Path(os.environ["SWARM_ENV_FILE"]).read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if "=" in line)
    inspected = on(MANAGER, "service", "inspect", *(f"{STACK}_{s}" for s in SERVICES))
    for secret in ("SECRET_KEY", "REDIS_PASSWORD", "REDIS_WEB_PASSWORD", "REDIS_WORKER_PASSWORD"):
        assert settings[secret].strip() not in inspected, f"{secret} is in a service spec"
    for service in ("web", "worker"):
        spec = service_spec(service)
        container = spec["TaskTemplate"]["ContainerSpec"]
        env = dict(e.split("=", 1) for e in container["Env"])
        # A secret (SECRET_KEY, JWT_SECRET) comes as NAME_FILE, from a Docker secret.
        missing = {
            n for n in compose_environment(service) if n not in env and f"{n}_FILE" not in env
        }
        assert not missing, f"{service}: settings of docker-compose.yml missing: {missing}"
        # Its own Redis user; the password from its own secret, not the default user's.
        assert env["REDIS_URL"] == f"redis://{service}@redis:6379/0"
        secrets = {s["SecretName"] for s in container["Secrets"]}
        assert f"taskbeam_redis_{service}_password" in secrets
        assert "taskbeam_redis_password" not in secrets
        assert spec["UpdateConfig"]["Order"] == "start-first"
        assert spec["UpdateConfig"]["FailureAction"] == "rollback"
        assert container["Healthcheck"]["Test"]
    assert service_spec("web")["EndpointSpec"]["Mode"] == "dnsrr"
    redis = service_spec("redis")
    assert redis["EndpointSpec"]["Mode"] == "dnsrr"
    assert redis["TaskTemplate"]["Placement"]["Constraints"] == [
        "node.labels.taskbeam.redis == true"
    ]
    nginx_env = service_spec("nginx")["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "WEB_UPSTREAM=tasks.web" in nginx_env
    nginx_names = {e.split("=", 1)[0] for e in nginx_env}
    assert set(compose_environment("nginx")) <= nginx_names
    for service in SERVICES:  # as in docker-compose.yml: only /tmp and volumes written
        assert service_spec(service)["TaskTemplate"]["ContainerSpec"]["ReadOnly"] is True


def containers(service):
    """(node, container id) of every task of ``service`` running on the swarm."""
    label = f"label=com.docker.swarm.service.name={STACK}_{service}"
    return [
        (node, cid) for node in NODES for cid in on(node, "ps", "-q", "--filter", label).split()
    ]


FRONT_ADDRESS = f'{{{{(index .NetworkSettings.Networks "{STACK}_front").IPAddress}}}}'
# Connects to port 8000 of every address given and asks for /healthz; prints, per
# address, "web" when Taskbeam's web answered (its JSON: {"status"} or {"error"}),
# else what did: a refusal, a timeout, or another server. A connection alone proves
# nothing: an address a node has no route to leaves by its default route, and a
# network that intercepts outgoing connections (a proxy) accepts it (seen here).
PROBE_WEB = r"""
import json, socket, sys
seen = {}
for address in sys.argv[1:]:
    try:
        with socket.create_connection((address, 8000), timeout=3) as conn:
            conn.settimeout(3)
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: web\r\n\r\n")
            reply = b""
            while len(reply) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        seen[address] = type(exc).__name__
        continue
    head, _, body = reply.partition(b"\r\n\r\n")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    web = isinstance(doc, dict) and bool(set(doc) & {"status", "error"})
    seen[address] = "web" if web else "other: " + head.split(b"\r\n")[0].decode("latin-1")
print(json.dumps(seen))
"""


def test_only_nginx_reaches_web():
    # As in Compose (tests/integration/test_security.py): from a worker, by name and by
    # each of web's addresses on every network, web does not answer on port 8000.
    addresses = ["web", "tasks.web"]
    for node, cid in containers("web"):
        addresses += on(
            node, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid
        ).split()
    assert len(addresses) >= 6, addresses  # two replicas, each on front and back
    for node, cid in containers("worker"):
        out = on(node, "exec", cid, "python", "-c", PROBE_WEB, *addresses)
        reached = {a: r for a, r in json.loads(out).items() if r == "web"}
        assert not reached, f"a worker on {node} reached web:8000 at {reached}"
    # The probe knows web when it reaches it: from a web container, its front address.
    (node, web), *_ = containers("web")
    front = on(node, "inspect", "-f", FRONT_ADDRESS, web).strip()
    assert json.loads(on(node, "exec", web, "python", "-c", PROBE_WEB, front)) == {front: "web"}
    # And Nginx reaches it (with a Host web takes: tasks.web is not one, 421).
    (node, nginx), *_ = containers("nginx")
    url, host = "http://tasks.web:8000/healthz", "Host: web"
    assert on(node, "exec", nginx, "wget", "-q", "-O", "-", "--header", host, url)


def test_web_and_workers_use_their_own_redis_users():
    (node, redis), *_ = containers("redis")
    clients = on(
        node,
        "exec",
        redis,
        "sh",
        "-c",
        'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli CLIENT LIST',
    )
    users = {}
    for line in clients.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        users.setdefault(fields["user"], set()).add(fields["cmd"])
    assert {"web", "worker"} <= set(users), users
    # The default user: only this command and the health check's ping.
    assert users.get("default", set()) <= {"client|list", "ping"}, users


def test_tasks_from_both_nodes_reach_clients_gaplessly(api):
    tasks, watchers = watched_tasks(api, TASKS, steps=20, step_ms=200)
    try:
        ran_on = {}
        for watcher, task in zip(watchers, tasks):
            watcher.wait_terminal([task["id"]], timeout=120)
            assert_gapless_single_terminal(watcher.history(task["id"]))
            ran_on[task["id"]] = api.snapshot(task["id"])["worker"]
        nodes = worker_nodes()
        used = {nodes.get(w) for w in ran_on.values()}
        assert used == set(NODES), f"tasks ran on {used}, not on every node {NODES}"
    finally:
        for watcher in watchers:
            watcher.close()


def test_export_written_on_one_node_downloads_through_nginx_on_the_other(api, watcher):
    # Nginx runs on node1 only (the edge label); exports are shared storage. Rounds of
    # exports at once until one ran on node2 (either worker may take any of them).
    nodes = worker_nodes()
    by_node = {}
    for _ in range(5):
        exports = [api.create("export") for _ in range(6)]
        for task in exports:
            watcher.follow(task["id"])
        watcher.wait_terminal([t["id"] for t in exports], timeout=180)
        for task in exports:
            snap = api.snapshot(task["id"])
            assert snap["state"] == "succeeded", snap
            response = api.request("GET", snap["result"]["download_url"], timeout=60)
            node = nodes.get(snap["worker"])
            by_node.setdefault(node, []).append(response.status_code)
            assert response.status_code == 200, (node, response.text[:200])
            assert len(response.content) == snap["result"]["bytes"]
        if NODES[1] in by_node:
            break
    assert NODES[1] in by_node, f"no export ran on the node without Nginx: {by_node}"


def chaos_row(fault, fault_action):
    """The chaos table's run (tests/integration/test_chaos.py) around ``fault_action``:
    ten watched tasks under way, the fault, then ready again and every task moved on,
    each ending once, gapless. ``fault_action`` returns the ids of the tasks whose run
    it stopped: those have moved on when a new run took them over (``retrying``) or
    they ended. Tasks of 30 s, so that they outlast the fault."""
    api = Api()
    tasks, watchers = watched_tasks(api, TASKS, steps=60, step_ms=500)
    try:
        wait_until(
            lambda: all(w.last_seq(t["id"]) >= 3 for w, t in zip(watchers, tasks)),
            60,
            what="every task under way",
        )
        before = {t["id"]: w.last_seq(t["id"]) for w, t in zip(watchers, tasks)}
        started = time.monotonic()
        stopped = fault_action(api, tasks) or ()

        def moved_on(watcher, task_id):
            if task_id in stopped:
                after = watcher.history(task_id)[before[task_id] :]
                return any(e["state"] in TERMINAL | {"retrying"} for e in after)
            return watcher.last_seq(task_id) > before[task_id]

        def stalled():
            return [t["id"] for w, t in zip(watchers, tasks) if not moved_on(w, t["id"])]

        try:
            wait_until(
                lambda: is_ready() and not stalled(), 120, interval=0.2, what="the stack to recover"
            )
        except AssertionError as exc:
            states = {t: (api.snapshot(t)["state"], api.snapshot(t)["progress"]) for t in stalled()}
            raise AssertionError(f"{exc}; ready: {is_ready()}; stalled tasks: {states}") from None
        recovery = time.monotonic() - started
        for watcher, task in zip(watchers, tasks):
            watcher.wait_terminal([task["id"]], timeout=180)
        row, histories = record_chaos_row(fault, watchers, tasks, recovery, "swarm-chaos.json")
        assert row["terminal"] == TASKS and row["gaps"] == 0, row
        for history in histories.values():
            assert_gapless_single_terminal(history)
        return row
    finally:
        for watcher in watchers:
            watcher.close()
        api.http.close()


def test_rolling_update_of_web_loses_nothing():
    # Returns once every replica is replaced (start-first, each healthy before the next).
    chaos_row(
        "swarm: update web",
        lambda api, tasks: on(MANAGER, "service", "update", "--force", f"{STACK}_web", timeout=300),
    )
    wait_until(converged, 120, interval=1, what="the stack to converge")


def tasks_on_second_node(api, tasks):
    nodes = worker_nodes()
    there = [t["id"] for t in tasks if nodes.get(api.snapshot(t["id"]).get("worker")) == NODES[1]]
    assert there, "no task was running on the second node"
    return there


def test_draining_the_second_node_mid_task_loses_nothing():
    node = node_name(NODES[1])

    def drain(api, tasks):
        there = tasks_on_second_node(api, tasks)
        on(MANAGER, "node", "update", "--availability", "drain", node)
        return there

    try:
        chaos_row("swarm: drain node", drain)
    finally:
        on(MANAGER, "node", "update", "--availability", "active", node)
    wait_until(converged, 120, interval=1, what="the stack to converge")


def test_losing_the_second_node_mid_task_loses_nothing():
    # Last: the node does not come back. Swarm leaves tasks where they run, so after the
    # drain the services are updated once more to put a web and a worker on it again.
    for service in ("worker", "web"):
        on(MANAGER, "service", "update", "--force", f"{STACK}_{service}", timeout=300)
    wait_until(
        lambda: converged() and NODES[1] in worker_nodes().values(),
        120,
        interval=1,
        what="a worker on the second node again",
    )

    def power_off(api, tasks):
        # SIGKILL to its dockerd (PID 1): every process of the node dies at once.
        there = tasks_on_second_node(api, tasks)
        subprocess.run(["docker", "kill", NODES[1]], check=True, capture_output=True, timeout=60)
        return there

    chaos_row("swarm: node lost", power_off)
    try:
        wait_until(converged, 120, interval=1, what="the stack to converge on one node")
    except AssertionError as exc:
        state = on(MANAGER, "service", "ls") + on(MANAGER, "node", "ls")
        raise AssertionError(f"{exc}; ready: {is_ready()}\n{state}") from None
