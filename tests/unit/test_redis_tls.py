"""Redis over TLS (``rediss://``, ``rediss+sentinel://``): every client (the store,
the broker, the emitter, both web listeners) against real redis-server and Sentinel
processes that accept only TLS, with certificates from a local CA
(tests/make_certs.sh, as `make certs` makes them)."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import kombu
import pytest
from conftest import wait_until_serving
from test_sentinel import free_port

import redis as redis_lib
from taskbeam import broker, config, store
from taskbeam.web import mq_listener
from taskbeam.web.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "tls-test-password"
MASTER = "taskbeam"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(ROOT / "tests" / "make_certs.sh"), str(folder)], check=True,
                   capture_output=True)  # fmt: skip
    return folder


def tls_args(certs):
    return ["--tls-cert-file", str(certs / "redis.pem"), "--tls-key-file",
            str(certs / "redis-key.pem"), "--tls-ca-cert-file", str(certs / "ca.pem"),
            "--tls-auth-clients", "no"]  # fmt: skip


def tls_client(certs, port, **options):
    """A redis-py client over TLS that trusts the local CA (redis-cli may be absent)."""
    return redis_lib.Redis(host="localhost", port=port, ssl=True, socket_timeout=5,
                           ssl_ca_certs=str(certs / "ca.pem"), **options)  # fmt: skip


class Server:
    def __init__(self, certs, workdir, *extra):
        self.port = free_port()
        argv = [shutil.which("redis-server"), *extra]
        argv += ["--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--dir",
                 str(workdir), "--save", "", "--appendonly", "no", *tls_args(certs)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        password = None if "--sentinel" in extra else PASSWORD
        wait_until_serving(tls_client(certs, self.port, password=password), self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def primary(certs, tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed: apt-get install redis-server (.ci/provision.sh does)")
    server = Server(certs, tmp_path_factory.mktemp("primary"), "--requirepass", PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sentinel(certs, primary, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sentinel")
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
        f"sentinel auth-pass {MASTER} {PASSWORD}\n"
        "tls-replication yes\n"  # the Sentinel reaches the data nodes over TLS too
    )
    server = Server(certs, workdir, str(conf), "--sentinel")
    client = tls_client(certs, server.port)
    deadline = time.monotonic() + 15
    while (client.sentinel_get_master_addr_by_name(MASTER) or (0, 0))[1] != primary.port:
        assert time.monotonic() < deadline, "the Sentinel does not know the primary"
        time.sleep(0.1)
    client.close()
    yield server
    server.stop()


def settings_for(url, ca_file):
    env = {"REDIS_URL": url, "REDIS_TLS_CA_FILE": str(ca_file), "REDIS_WAIT_REPLICAS": "0"}
    return config.load(env, need_secret=False)


def urls(primary, sentinel):
    return {
        "rediss": f"rediss://:{PASSWORD}@localhost:{primary.port}/0",
        "rediss+sentinel": f"rediss+sentinel://:{PASSWORD}@localhost:{sentinel.port}/0/{MASTER}",
    }


@pytest.mark.parametrize("scheme", ["rediss", "rediss+sentinel"])
def test_every_client_works_over_tls(scheme, primary, sentinel, certs, monkeypatch):
    settings = settings_for(urls(primary, sentinel)[scheme], certs / "ca.pem")
    client = store.redis_client(settings)
    assert client.ping()

    # The web's listener (fast and stock) subscribes; the worker's emitter publishes.
    fast = mq_listener.make_manager(
        settings.redis_url, "tls-test", Metrics(), store.redis_tls(settings), fast=True
    )
    subscriber, connection = fast.subscribe()
    assert connection.read_response()[0] in (b"subscribe", "subscribe")
    fast._redis_connect()  # how python-socketio connects to publish the web's own emits
    fast.redis.publish("tls-test", "hello")
    assert connection.read_response()[0] in (b"message", "message")
    monkeypatch.setenv("REDIS_URL", settings.redis_url)  # read when the worker module loads
    from taskbeam import worker

    emitter = worker.make_runtime(settings, redis_conn=client).emitter
    emitter.socketio.emit("tls", {"n": 1}, to="nobody")
    assert client.pubsub_numsub(settings.socketio_channel)  # it is connected
    stock = mq_listener.StockRedisManager(
        settings.redis_url, "tls-test", Metrics(), store.redis_tls(settings)
    )
    stock._redis_connect()
    assert stock.redis.ping()

    # The broker: a message there and back.
    app = broker.make_celery(settings)
    queue = kombu.Queue("tls-test")
    with app.connection_for_write() as conn:
        with conn.Producer() as producer:
            producer.publish({"n": 1}, routing_key="tls-test", declare=[queue])
        with conn.SimpleQueue(queue) as simple:
            message = simple.get(timeout=5)
            assert message.payload == {"n": 1}
            message.ack()
    for c in (client, subscriber, fast.redis, stock.redis, emitter.socketio.server.manager.redis):
        c.close()


@pytest.mark.parametrize("scheme", ["rediss", "rediss+sentinel"])
def test_a_server_the_ca_did_not_sign_is_refused(scheme, primary, sentinel, tmp_path):
    """Without the local CA (another CA, or the system's) the certificate is not trusted."""
    subprocess.run(["sh", str(ROOT / "tests" / "make_certs.sh"), str(tmp_path)], check=True,
                   capture_output=True)  # fmt: skip
    settings = settings_for(urls(primary, sentinel)[scheme], tmp_path / "ca.pem")
    client = store.redis_client(settings)
    # Under Sentinel no Sentinel is trusted, so no primary can be found.
    refused = "certificate verify failed" if scheme == "rediss" else "No master found"
    with pytest.raises(redis_lib.ConnectionError, match=refused):
        client.ping()
    client.close()


def test_plain_clients_get_nothing_from_a_tls_only_redis(primary):
    client = redis_lib.Redis(port=primary.port, password=PASSWORD, socket_timeout=2)
    with pytest.raises(redis_lib.ConnectionError):
        client.ping()
    client.close()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"REDIS_URL": "redis://r:6379/0", "REDIS_TLS_CA_FILE": "/etc/hostname"},
         "needs a TLS REDIS_URL"),
        ({"REDIS_URL": "rediss://r:6379/0", "REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"},
         "cannot read"),
        ({"REDIS_URL": "rediss://r:6379/0", "REDIS_TLS_CA_FILE": "/etc/hostname"},
         "no PEM certificate"),
    ],
)  # fmt: skip
def test_a_bad_ca_file_stops_start_up(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env, need_secret=False)


def test_the_sentinel_form_python_socketio_reads():
    url = "rediss+sentinel://:pw@s1:26379,s2:26379/0/taskbeam"
    from taskbeam import sentinel

    stock_url, options = sentinel.stock_form(url, sentinel.tls_options(url, "/ca.pem"))
    assert stock_url == "redis+sentinel://:pw@s1:26379,s2:26379/0/taskbeam"
    assert options["ssl"] is True and options["sentinel_kwargs"]["ssl_ca_certs"] == "/ca.pem"
    assert json.dumps(sentinel.tls_options("redis://r:6379/0", "/ca.pem")) == "{}"
