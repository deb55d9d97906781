"""Unit tests for the REST layer's input handling, on a Flask app with stub services:
bad ``after``/``limit``, malformed task ids, deeply nested JSON, per-IP rate limit,
the active-task cap, paged events spliced from stored JSON, and the Host allow-list."""

import json
from types import SimpleNamespace

import pytest
from flask import Flask, session

from taskbeam import config, protocol
from taskbeam.store import TooManyActive
from taskbeam.web import api, errors, front, identity

KNOWN = "AbCdEfGhIjKlMn_-"  # the shape of secrets.token_urlsafe(12)


class StubRedis:
    """Just the pipeline INCRBY/EXPIRE/DECRBY that check_rate and refund use (and an
    INFO without maxmemory)."""

    def __init__(self):
        self.counts = {}

    def info(self, section):
        return {}

    def pipeline(self, transaction=True):
        redis, ops = self, []

        class Pipe:
            def incrby(self, key, n):
                ops.append((key, n))

            def decrby(self, key, n):
                ops.append((key, -n))

            def expire(self, key, seconds):
                ops.append(None)

            def execute(self):
                results = []
                for op in ops:
                    if op is None:
                        results.append(True)
                        continue
                    key, n = op
                    redis.counts[key] = redis.counts.get(key, 0) + n
                    results.append(redis.counts[key])
                return results

        return Pipe()


class StubStore:
    def __init__(self, events=()):
        self.events = [json.dumps(e, separators=(",", ":")) for e in events]
        self.looked_up = []
        self.active_limit = None

    def owned_record(self, task_id, owner):
        self.looked_up.append(task_id)
        return {"id": task_id} if task_id == KNOWN else None

    @staticmethod
    def snapshot_of(rec):
        return rec

    def events_page(self, task_id, after, limit):
        page = self.events[after : after + limit]
        return page, after + len(page), after + limit < len(self.events)

    def create(self, *, kind, owner, params, max_active=0, **quota_args):
        if self.active_limit is not None:
            raise TooManyActive(self.active_limit)
        return {"id": KNOWN, "kind": kind, "state": "queued", "seq": 1}


def make_app(store=None, **env):
    settings = config.load(
        {
            "REDIS_URL": "redis://:0123456789abcdef@redis:6379/0",
            "SECRET_KEY": "k0123456789" * 4,
            "MAX_ACTIVE_TASKS_PER_IP": "0",  # test_quotas.py, on a real Redis
            **env,
        }
    )
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key)
    app.extensions["taskbeam"] = SimpleNamespace(
        settings=settings,
        redis=StubRedis(),
        store=store or StubStore(),
        celery=SimpleNamespace(send_task=lambda *a, **k: None),
        identity=identity.Identity(settings.auth),
        socketio=SimpleNamespace(emit=lambda *a, **k: None),
    )

    @app.before_request
    def owner():
        session.setdefault("owner", "someone")

    app.register_blueprint(api.bp)
    errors.register_error_handlers(app)
    app.wsgi_app = front.HostCheck(front.trust_nginx(app.wsgi_app), settings)
    return app


def events(n):
    return [
        {
            "task_id": KNOWN,
            "seq": s,
            "state": "running",
            "progress": s / n * 100,
            "message": f"step {s}",
            "ts": 1.5,
        }
        for s in range(1, n + 1)
    ]


def code_of(response):
    return response.get_json()["error"]["code"]


@pytest.mark.parametrize("after", ["²", "١٢", "1²", "-1", "1.0", " 1", "", "9" * 19, "0x1"])
def test_after_must_be_ascii_digits_within_bounds(after):
    response = (
        make_app().test_client().get(f"/api/tasks/{KNOWN}/events", query_string={"after": after})
    )
    assert response.status_code == 400
    assert code_of(response) == "invalid_params"


@pytest.mark.parametrize("limit", ["0", "501", "²", "ten", ""])
def test_limit_must_be_1_to_500(limit):
    response = (
        make_app().test_client().get(f"/api/tasks/{KNOWN}/events", query_string={"limit": limit})
    )
    assert response.status_code == 400
    assert code_of(response) == "invalid_params"


def test_events_are_paged_with_has_more_and_next_after():
    app = make_app(StubStore(events(1200)))
    client = app.test_client()
    first = client.get(f"/api/tasks/{KNOWN}/events?after=0")
    assert first.status_code == 200 and first.mimetype == "application/json"
    body = first.get_json()
    assert [e["seq"] for e in body["events"]] == list(range(1, 501))
    assert body["has_more"] is True and body["next_after"] == 500
    seen, after = [], 0
    while True:
        body = client.get(f"/api/tasks/{KNOWN}/events?after={after}&limit=300").get_json()
        seen += [e["seq"] for e in body["events"]]
        after = body["next_after"]
        if not body["has_more"]:
            break
    assert seen == list(range(1, 1201))
    empty = client.get(f"/api/tasks/{KNOWN}/events?after=1200").get_json()
    assert empty == {"events": [], "has_more": False, "next_after": 1200}


def test_events_body_is_the_stored_json_spliced():
    store = StubStore(events(3))
    body = make_app(store).test_client().get(f"/api/tasks/{KNOWN}/events").get_data(as_text=True)
    assert body.startswith('{"events":[' + ",".join(store.events) + "]")


@pytest.mark.parametrize(
    "task_id",
    [
        f"{KNOWN}:events",
        KNOWN[:-1],
        KNOWN + "x",
        "a" * 200,
        "AbCdEfGh.jKlMn_-",
        "AbCdEfGhIjKlMn_%C3%A9",
    ],
)
def test_malformed_task_ids_are_404_without_a_lookup(task_id):
    store = StubStore()
    client = make_app(store).test_client()
    for path in (
        f"/api/tasks/{task_id}",
        f"/api/tasks/{task_id}/events",
        f"/api/tasks/{task_id}/download",
    ):
        response = client.get(path)
        assert response.status_code == 404 and code_of(response) == "not_found", path
    assert store.looked_up == []


def test_valid_task_id():
    assert protocol.valid_task_id(KNOWN)
    for bad in (None, 12, "", KNOWN + "\n", f"{KNOWN}:events", "é" * 16, "a" * 15):
        assert not protocol.valid_task_id(bad)


@pytest.mark.parametrize("body", ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000])
def test_deeply_nested_json_is_invalid_json_not_500(body):
    response = (
        make_app().test_client().post("/api/tasks", data=body, content_type="application/json")
    )
    assert response.status_code == 400
    assert code_of(response) == "invalid_json"


def create(client, ip, xff=None):
    headers = {"X-Forwarded-For": xff} if xff else {}
    return client.post(
        "/api/tasks",
        json={"kind": "simulate", "params": {"steps": 1}},
        environ_base={"REMOTE_ADDR": ip},
        headers=headers,
    )


def test_creations_are_limited_per_client_address_across_sessions():
    app = make_app(RATE_LIMIT_PER_IP_PER_MINUTE="60")
    statuses = []
    for _ in range(70):
        # A fresh client each time: no cookie, so a new owner every request.
        statuses.append(create(app.test_client(), "172.18.0.1", "203.0.113.7").status_code)
    assert statuses[:60] == [202] * 60 and statuses[60:] == [429] * 10
    refused = create(app.test_client(), "172.18.0.1", "203.0.113.7")
    assert code_of(refused) == "rate_limited" and 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another address behind the same proxy has its own budget.
    assert create(app.test_client(), "172.18.0.1", "203.0.113.8").status_code == 202


def test_only_the_last_forwarded_address_counts():
    """X-Forwarded-For is trusted for one hop (Nginx's): a client's own entries are ignored."""
    app = make_app(RATE_LIMIT_PER_IP_PER_MINUTE="60")
    statuses = [
        create(app.test_client(), "172.18.0.1", f"10.0.0.{i}, 203.0.113.9").status_code
        for i in range(61)
    ]
    assert statuses[-1] == 429


def test_ipv6_clients_are_limited_per_64():
    """Any address of one /64 is one client's: rotating them does not make more room."""
    app = make_app(RATE_LIMIT_PER_IP_PER_MINUTE="60")
    statuses = [
        create(app.test_client(), "172.18.0.1", f"2001:db8:1:2::{i:x}").status_code
        for i in range(1, 62)
    ]
    assert statuses[:60] == [202] * 60 and statuses[60] == 429
    assert create(app.test_client(), "172.18.0.1", "2001:db8:1:3::1").status_code == 202


def test_too_many_active_tasks_is_429_too_many_active():
    store = StubStore()
    store.active_limit = 10
    response = create(make_app(store).test_client(), "172.18.0.1")
    assert response.status_code == 429
    assert code_of(response) == "too_many_active"
    assert "10" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:18181",
        "localhost",
        "LOCALHOST:8080",
        "[::1]:8080",
        "10.1.2.3",
        "web:8000",
        "tasks.example",
        "partner.example:8443",
    ],
)
def test_allowed_hosts(host):
    app = make_app(ALLOWED_HOSTS="tasks.example", ALLOWED_ORIGINS="https://partner.example")
    assert app.test_client().get("/healthz", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "tasks.example.evil",
        "127.0.0.1.nip.io",
    ],
)
def test_other_hosts_get_421_in_the_contract_shape(host):
    app = make_app(ALLOWED_HOSTS="tasks.example")
    for path in ("/api/tasks", "/socket.io/?EIO=4&transport=polling"):
        response = app.test_client().get(path, headers={"Host": host})
        assert response.status_code == 421
        assert json.loads(response.data)["error"]["code"] == "misdirected_request"


def test_star_allows_any_host():
    app = make_app(ALLOWED_HOSTS="*")
    assert app.test_client().get("/healthz", headers={"Host": "evil.example"}).status_code == 200


def test_kinds_lists_every_registered_kind_with_its_form_schema():
    body = make_app().test_client().get("/api/kinds").get_json()
    kinds = {k["kind"]: k for k in body["kinds"]}
    assert {"simulate", "export", "countdown"} <= set(kinds)  # countdown: jobs/ (JOBS_MODULES)
    assert [k["kind"] for k in body["kinds"]] == sorted(kinds)
    simulate = kinds["simulate"]
    assert simulate["units"] == "steps" and simulate["title"] == "Simulation"
    assert simulate["schema"]["properties"]["steps"]["maximum"] == 10_000


def test_a_bad_param_of_a_declared_kind_is_a_400_naming_it():
    client = make_app().test_client()
    for params, field in (
        ({"start": 0}, "params.start"),  # integer bounds
        ({"pause_s": "1"}, "params.pause_s"),  # number
        ({"word": "x" * 41}, "params.word"),  # string length
        ({"shout": "yes"}, "params.shout"),  # boolean
        ({"colour": 1}, "params.colour"),  # unknown
    ):
        response = client.post("/api/tasks", json={"kind": "countdown", "params": params})
        assert response.status_code == 400, params
        assert response.get_json()["error"]["message"].startswith(field), response.get_json()


def test_a_foreign_origin_on_an_apps_own_route_is_the_contracts_403():
    # An app of your own (the extension): the API blueprint without the app-wide
    # handlers create_app adds; the origin check still runs before the app's routes.
    settings = config.load(
        {"REDIS_URL": "redis://:0123456789abcdef@redis:6379/0", "SECRET_KEY": "k0123456789" * 4}
    )
    app = Flask(__name__)
    app.extensions["taskbeam"] = SimpleNamespace(settings=settings)
    app.register_blueprint(api.bp)
    app.add_url_rule("/reports", "reports", lambda: "started", methods=["POST"])
    client = app.test_client()
    response = client.post("/reports", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and code_of(response) == "forbidden_origin"
    own = client.post("/reports", headers={"Origin": "http://localhost"})
    assert own.status_code == 200 and own.text == "started"
