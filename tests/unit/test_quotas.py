"""What one client may accumulate (taskbeam/quotas.py), on a real Redis: unfinished
tasks per address across sessions, the Redis memory guard, the anonymous retention,
the export byte caps and free-space floor, and an export's file going with its task."""

import os
import time
from types import SimpleNamespace

import pytest
from flask import Flask

from taskbeam import config, export, progress, protocol, quotas
from taskbeam.store import TaskStore
from taskbeam.web import api, errors, front, identity

BASE = {
    "REDIS_URL": "redis://placeholder:6379/0",
    "SECRET_KEY": "k0123456789" * 4,
    "TASKBEAM_NAMESPACE": "q",
}


def load(**env):
    return config.load({**BASE, **env})


def make_app(redis, tmp_path, **env):
    settings = load(EXPORT_DIR=str(tmp_path), **env)
    store = TaskStore(redis, settings)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key)
    app.extensions["taskbeam"] = SimpleNamespace(
        settings=settings,
        redis=redis,
        store=store,
        celery=SimpleNamespace(send_task=lambda *a, **k: None),
        identity=identity.Identity(settings.auth),
    )
    counter = iter(range(10**6))

    @app.before_request
    def owner():
        # No cookie jar in these clients: every request is a new anonymous owner.
        from flask import session

        session.setdefault("owner", f"visitor-{next(counter)}")

    app.register_blueprint(api.bp)
    errors.register_error_handlers(app)
    app.wsgi_app = front.trust_nginx(app.wsgi_app)
    return app, store


def post(app, address, kind="simulate", params=None):
    return app.test_client().post(
        "/api/tasks",
        json={"kind": kind, "params": params if params is not None else {"steps": 1}},
        environ_base={"REMOTE_ADDR": "172.18.0.1"},
        headers={"X-Forwarded-For": address},
    )


def finish(store, task_id, state=protocol.SUCCEEDED, **patch):
    store.append(task_id, state=protocol.RUNNING, message="Running")
    store.append(task_id, state=state, progress=100, message="Done", **patch)


# --- per address ------------------------------------------------------------


def test_unfinished_tasks_are_capped_per_address_across_sessions(redis_client, tmp_path):
    app, store = make_app(redis_client, tmp_path, MAX_ACTIVE_TASKS_PER_IP="3")
    made = [post(app, "203.0.113.5") for _ in range(3)]
    assert [r.status_code for r in made] == [202] * 3
    refused = post(app, "203.0.113.5")
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "too_many_active"
    assert refused.headers["Retry-After"] == "5"
    # The same /64 is the same client; another address is not.
    assert post(app, "203.0.113.6").status_code == 202
    # A task that ends makes room again.
    finish(store, made[0].json["id"], protocol.CANCELLED)
    assert post(app, "203.0.113.5").status_code == 202
    assert post(app, "203.0.113.5").status_code == 429


def test_ipv6_addresses_count_per_64():
    assert quotas.address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert quotas.address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert quotas.address_key("::ffff:203.0.113.5") == "203.0.113.5"
    assert quotas.address_key("203.0.113.5") == "203.0.113.5"


# --- a workflow's children count as creations -----------------------------------


@pytest.fixture
def minute(monkeypatch):
    """The rate windows' clock held 10 s into a minute: no window ends mid-test."""
    fixed = (time.time() // 60) * 60 + 10
    monkeypatch.setattr(api, "time", SimpleNamespace(time=lambda: fixed))


def post_as(app, owner, address, kind="simulate", params=None):
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["owner"] = owner
    return client.post(
        "/api/tasks",
        json={"kind": kind, "params": params if params is not None else {"steps": 1}},
        environ_base={"REMOTE_ADDR": "172.18.0.1"},
        headers={"X-Forwarded-For": address},
    )


def primes(shards):
    return {"limit": 10_000, "shards": shards, "slow_ms": 0}


def stored(redis, store):
    """How many task records Redis holds (parents and children)."""
    prefix = store.keys.task("")
    return sum(":" not in key[len(prefix) :] for key in redis.scan_iter(prefix + "*"))


def test_a_workflows_children_count_against_the_session_window(redis_client, tmp_path, minute):
    app, store = make_app(redis_client, tmp_path, RATE_LIMIT_PER_MINUTE="60")
    ok = post_as(app, "u-1", "203.0.113.5", "primes", primes(39))  # 40 creations
    assert ok.status_code == 202, ok.json
    refused = post_as(app, "u-1", "203.0.113.5", "primes", primes(20))  # 21: 61 > 60
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "rate_limited"
    assert "60" in refused.json["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert stored(redis_client, store) == 40  # nothing of the refused one
    # The refusal charged nothing: 19 more fit, then the window is full.
    assert post_as(app, "u-1", "203.0.113.5", "primes", primes(18)).status_code == 202
    assert post_as(app, "u-1", "203.0.113.5").status_code == 202
    assert post_as(app, "u-1", "203.0.113.5").status_code == 429
    # Another session has a window of its own.
    assert post_as(app, "u-2", "203.0.113.5").status_code == 202


def test_a_workflows_children_count_against_the_address_window(redis_client, tmp_path, minute):
    app, store = make_app(redis_client, tmp_path, RATE_LIMIT_PER_IP_PER_MINUTE="60")
    assert post(app, "203.0.113.5", "primes", primes(50)).status_code == 202  # 51
    refused = post(app, "203.0.113.5", "primes", primes(10))  # a new session: 11 more
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "rate_limited"
    assert "per address" in refused.json["error"]["message"]
    assert stored(redis_client, store) == 51
    assert [post(app, "203.0.113.5").status_code for _ in range(10)] == [202] * 9 + [429]
    assert post(app, "203.0.113.6", "primes", primes(10)).status_code == 202


def test_a_plan_larger_than_a_minutes_allowance_is_refused(redis_client, tmp_path, minute):
    app, store = make_app(
        redis_client, tmp_path, RATE_LIMIT_PER_MINUTE="60", RATE_LIMIT_PER_IP_PER_MINUTE="100"
    )
    refused = post(app, "203.0.113.5", "primes", primes(60))  # 61 creations: never fits
    assert refused.status_code == 400
    assert refused.json["error"]["code"] == "invalid_params"
    assert "RATE_LIMIT_PER_MINUTE" in refused.json["error"]["message"]
    assert "Retry-After" not in refused.headers
    assert stored(redis_client, store) == 0
    app, store = make_app(redis_client, tmp_path, RATE_LIMIT_PER_IP_PER_MINUTE="60")
    refused = post(app, "203.0.113.5", "primes", primes(60))
    assert refused.status_code == 400
    assert "RATE_LIMIT_PER_IP_PER_MINUTE" in refused.json["error"]["message"]
    # Nothing was charged: a plan that fits exactly still does.
    assert post(app, "203.0.113.5", "primes", primes(59)).status_code == 202
    assert stored(redis_client, store) == 60


def test_a_workflow_refused_by_another_limit_is_not_charged(redis_client, tmp_path, minute):
    app, store = make_app(redis_client, tmp_path, RATE_LIMIT_PER_MINUTE="60", MAX_ACTIVE_TASKS="1")
    first = post_as(app, "u-1", "203.0.113.5")
    refused = post_as(app, "u-1", "203.0.113.5", "primes", primes(50))
    assert refused.json["error"]["code"] == "too_many_active"
    finish(store, first.json["id"])
    # 1 + 59 = 60 fit only if the refused workflow's 51 were given back.
    assert post_as(app, "u-1", "203.0.113.5", "primes", primes(58)).status_code == 202
    assert stored(redis_client, store) == 60


# --- the Redis memory guard -------------------------------------------------


@pytest.fixture
def maxmemory(redis_client):
    """Sets the throwaway Redis's maxmemory; back to none afterwards."""
    yield lambda n: redis_client.config_set("maxmemory", n)
    redis_client.config_set("maxmemory", 0)


def test_above_the_high_water_mark_new_work_is_503_busy(redis_client, tmp_path, maxmemory):
    app, store = make_app(redis_client, tmp_path)
    running = store.create(kind="simulate", owner="u-1", params={})["id"]
    store.append(running, state=protocol.RUNNING, message="Running")
    used = int(redis_client.info("memory")["used_memory"])
    maxmemory(int(used / 0.85))  # used is 85% of it: over the 80% mark
    refused = post(app, "203.0.113.9")
    assert refused.status_code == 503
    assert refused.json["error"]["code"] == "busy"
    assert int(refused.headers["Retry-After"]) > 0
    # The running task still finishes, and its stored events are all there.
    store.append(running, state=protocol.SUCCEEDED, progress=100, message="ok")
    assert [e["seq"] for e in store.events_after(running, 0)] == [1, 2, 3]


def test_the_memory_reading_is_cached_for_a_second(redis_client, maxmemory):
    now = [100.0]
    guard = quotas.MemoryGuard(redis_client, 80, clock=lambda: now[0])
    maxmemory(int(int(redis_client.info("memory")["used_memory"]) / 0.9))
    assert guard.busy()
    maxmemory(0)
    now[0] += 0.5
    assert guard.busy()  # no INFO within the second
    now[0] += 0.6
    assert not guard.busy()


# --- anonymous retention ------------------------------------------------------


def test_anonymous_owners_tasks_expire_sooner(redis_client, tmp_path):
    app, store = make_app(redis_client, tmp_path, ANONYMOUS_TASK_RETENTION_S="600")
    task_id = post(app, "203.0.113.5").json["id"]
    assert (
        redis_client.ttl(store.keys.task(task_id)) <= 600 + 3_600
    )  # plus the time limit while unfinished
    finish(store, task_id)
    assert 0 < redis_client.ttl(store.keys.task(task_id)) <= 600
    assert 0 < redis_client.ttl(store.keys.events(task_id)) <= 600
    # An owner with a login (a direct store call names no retention) keeps the default.
    other = store.create(kind="simulate", owner="u-1", params={})["id"]
    finish(store, other)
    assert redis_client.ttl(store.keys.task(other)) > 600


# --- exports ------------------------------------------------------------------


def export_file(store, settings, owner, size, address=None):
    """A finished export of ``size`` bytes on the exports volume, as a worker leaves it."""
    task_id = store.create(kind="export", owner=owner, params={}, address=address)["id"]
    name = export.export_file_name(task_id, "1", "csv")
    with open(os.path.join(settings.export_dir, name), "wb") as f:
        f.write(b"x" * size)
    store.redis.hset(store.keys.task(task_id), "fence", "1")
    result = {"filename": "orders.csv", "expires_at": "2999-01-01T00:00:00Z", "bytes": size}
    finish(store, task_id, result=result)
    return task_id, name


def export_for(app, owner, address="203.0.113.5"):
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["owner"] = owner
    return client.post(
        "/api/tasks",
        json={"kind": "export", "params": {}},
        environ_base={"REMOTE_ADDR": "172.18.0.1"},
        headers={"X-Forwarded-For": address},
    )


def test_export_bytes_are_capped_per_owner_and_in_total(redis_client, tmp_path):
    env = {"EXPORT_QUOTA_PER_OWNER_BYTES": "1000", "EXPORT_QUOTA_BYTES": "2500"}
    app, store = make_app(redis_client, tmp_path, **env)
    settings = app.extensions["taskbeam"].settings
    export_file(store, settings, "alice", 600)
    quotas.report_export_usage(redis_client, store, settings)
    assert export_for(app, "alice").status_code == 202
    export_file(store, settings, "alice", 600)
    quotas.report_export_usage(redis_client, store, settings)
    refused = export_for(app, "alice")
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "quota_exceeded"
    assert 0 < int(refused.headers["Retry-After"]) <= settings.export_ttl_s
    assert export_for(app, "bob").status_code == 202  # bob has stored nothing
    export_file(store, settings, "bob", 1400)
    quotas.report_export_usage(redis_client, store, settings)
    full = export_for(app, "carol")  # 2,600 bytes stored of 2,500
    assert full.status_code == 507
    assert full.json["error"]["code"] == "storage_full"
    assert int(full.headers["Retry-After"]) > 0
    # Other kinds of task are not exports: they still run.
    assert post(app, "203.0.113.5").status_code == 202


def test_export_bytes_are_capped_per_address_across_sessions(redis_client, tmp_path):
    app, store = make_app(redis_client, tmp_path, EXPORT_QUOTA_PER_IP_BYTES="1000")
    settings = app.extensions["taskbeam"].settings
    assert export_for(app, "alice", "2001:db8::1").status_code == 202
    export_file(store, settings, "alice", 600, address="2001:db8::/64")
    export_file(store, settings, "bob", 600, address="2001:db8::/64")
    quotas.report_export_usage(redis_client, store, settings)
    refused = export_for(app, "carol", "2001:db8::2")  # a new cookie, the same /64
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "quota_exceeded"
    assert export_for(app, "carol", "2001:db8:0:1::2").status_code == 202
    # What a creation through the API stored: the address key, for this sum.
    made = export_for(app, "dave", "2001:db8:0:2::9").json["id"]
    assert redis_client.hget(store.keys.task(made), "addr") == "2001:db8:0:2::/64"


def test_below_the_free_space_floor_exports_are_refused_and_stopped(
    redis_client, tmp_path, monkeypatch
):
    app, store = make_app(redis_client, tmp_path, EXPORT_MIN_FREE_PCT="10")
    settings = app.extensions["taskbeam"].settings
    statvfs = os.statvfs(tmp_path)
    free = SimpleNamespace(f_blocks=1000, f_frsize=4096, f_bavail=200)
    monkeypatch.setattr(quotas.os, "statvfs", lambda path: free)
    quotas.report_export_usage(redis_client, store, settings)
    assert export_for(app, "alice").status_code == 202
    free.f_bavail = 90  # 9% free: below the 10% floor
    quotas.report_export_usage(redis_client, store, settings)
    refused = export_for(app, "alice")
    assert refused.status_code == 507 and refused.json["error"]["code"] == "storage_full"
    # An export already running stops at its next batch.
    with pytest.raises(progress.JobError) as stopped:
        quotas.check_free_space(settings)
    assert stopped.value.code == "storage_full"
    assert statvfs.f_blocks  # (the real volume was measured too)


def test_a_default_total_cap_is_half_the_volume(tmp_path):
    settings = load(EXPORT_DIR=str(tmp_path))
    size, _free, floor, cap = quotas.volume(settings)
    assert cap == size // 2 and floor == size // 10


def test_deleting_a_task_deletes_its_export_file(redis_client, tmp_path):
    app, store = make_app(redis_client, tmp_path)
    settings = app.extensions["taskbeam"].settings
    task_id, name = export_file(store, settings, "alice", 100)
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["owner"] = "alice"
    assert client.delete(f"/api/tasks/{task_id}").status_code == 204
    assert quotas.remove_forgotten_exports(redis_client, settings) == 1  # a worker's round
    assert not os.path.exists(os.path.join(settings.export_dir, name))
