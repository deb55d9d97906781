"""redis/start.sh's ACL users on a real redis-server (loopback): each role may do its
work and nothing an attacker with its password would want. The stack's tests
(tests/integration/test_security.py) check the running services use them."""

import os

import pytest
from test_sentinel import ROLE_ENV, ROOT, Server, shipped_redis

import redis as redis_lib

# Commands no service role may run: the server's own settings, users, data as a whole.
FORBIDDEN = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all"),
    ("KEYS", "*"),
    ("SHUTDOWN",),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("MONITOR",),
    ("CLIENT", "KILL", "TYPE", "normal"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    server = shipped_redis(tmp_path_factory.mktemp("acl"))
    yield server
    server.stop()


def as_user(node, user):
    password = ROLE_ENV[f"REDIS_{user.upper()}_PASSWORD"]
    return redis_lib.Redis(port=node.port, username=user, password=password)


@pytest.mark.parametrize("user", ["web", "worker", "flower", "sentinel"])
@pytest.mark.parametrize("command", FORBIDDEN, ids=" ".join)
def test_no_role_may_run_admin_or_dangerous_commands(node, user, command):
    if user == "sentinel" and command[:2] == ("CLIENT", "KILL"):
        pytest.skip("a Sentinel closes clients after a failover (Redis's Sentinel docs)")
    with pytest.raises(redis_lib.exceptions.NoPermissionError):
        as_user(node, user).execute_command(*command)


def test_web_may_touch_only_its_namespaces_keys(node):
    web = as_user(node, "web")
    web.set("taskbeam:probe", 1)
    web.eval("return redis.call('INCR', KEYS[1])", 1, "taskbeam:probe")
    assert web.info("memory")["used_memory"] > 0  # INFO: the memory guard, /metrics
    for key in ("other", "celery", "_kombu.binding.celery"):
        with pytest.raises(redis_lib.exceptions.NoPermissionError):
            web.get(key)
        with pytest.raises(redis_lib.exceptions.NoPermissionError):
            web.eval("return redis.call('GET', KEYS[1])", 1, key)


def test_worker_and_flower_may_use_celerys_keys_and_channels(node):
    for user in ("worker", "flower"):
        client = as_user(node, user)
        client.lpush("celery", "m")  # kombu names some keys without the prefix
        client.brpop(["celery"], timeout=1)
        client.sadd("_kombu.binding.celery", "x")
        client.publish("/0.celery.pidbox", "ping")


def test_the_default_user_has_everything_and_wants_the_password(node):
    assert node.client.config_get("maxmemory")  # operators, the health check
    with pytest.raises(redis_lib.exceptions.AuthenticationError):
        redis_lib.Redis(port=node.port).ping()


def test_the_web_may_run_every_store_script_it_calls(node):
    """A script's declared keys are checked too: an empty placeholder key is refused."""
    from taskbeam import config, workflows
    from taskbeam.store import TaskStore

    settings = config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "taskbeam"},
        need_secret=False,
    )
    password = ROLE_ENV["REDIS_WEB_PASSWORD"]
    web = redis_lib.Redis(port=node.port, username="web", password=password, decode_responses=True)
    store = TaskStore(web, settings)
    parent = store.create(kind="primes", owner="alice", params={})
    child = workflows.PlannedChild("count_primes", {"start": 0, "stop": 10}, 1.0)
    store.create_children(parent, [child], span=90, allow_failures=False, fan_in=True, stage="a")
    store.append(parent["id"], state="cancelled", message="Cancelled")
    assert store.cancel_children(parent["id"]) == 1
    store.flush_rollups()
    assert store.remove_finished(parent["id"], "alice")


def test_passwords_may_come_from_files(tmp_path):
    # Swarm gives secrets as files (deploy/swarm/stack.yml): NAME_FILE, as the app reads.
    conf = tmp_path / "redis.conf"
    conf.write_text((ROOT / "redis" / "redis.conf").read_text().replace("dir /data", "dir ."))
    env = {"PATH": os.environ["PATH"], "REDIS_CONF": str(conf)}
    for name, value in ROLE_ENV.items():
        (tmp_path / name).write_text(value + "\n")  # as `docker secret create` may keep it
        env[f"{name}_FILE"] = str(tmp_path / name)
    launcher = ["sh", str(ROOT / "redis" / "start.sh")]
    server = Server(tmp_path, launcher=launcher, env=env, password=ROLE_ENV["REDIS_PASSWORD"])
    try:
        for user in ("web", "worker", "flower", "sentinel"):
            assert as_user(server, user).ping()  # logged in as its user
    finally:
        server.stop()


def test_without_flowers_password_there_is_no_flower_user(tmp_path):
    # The Swarm stack and Kubernetes run no Flower: its user exists only with a password.
    conf = tmp_path / "redis.conf"
    conf.write_text((ROOT / "redis" / "redis.conf").read_text().replace("dir /data", "dir ."))
    env = {"PATH": os.environ["PATH"], "REDIS_CONF": str(conf), **ROLE_ENV}
    del env["REDIS_FLOWER_PASSWORD"]
    launcher = ["sh", str(ROOT / "redis" / "start.sh")]
    server = Server(tmp_path, launcher=launcher, env=env, password=ROLE_ENV["REDIS_PASSWORD"])
    try:
        assert set(server.client.acl_users()) == {"default", "web", "worker", "sentinel"}
    finally:
        server.stop()
