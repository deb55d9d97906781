"""taskbeam.broker_transport against the real kombu and a real redis-server that
is stopped and started again, the way Celery's consumer meets a Redis restart:
it collects the broken connection, then closes it, and the tasks still running
acknowledge their messages afterwards."""

import shutil
import socket
import subprocess
import time

import kombu
import pytest

import redis as redis_lib
from taskbeam import broker, broker_transport, config, store


class RestartableRedis:
    """A redis-server on a free loopback port, persisted so a restart keeps its data."""

    def __init__(self, workdir):
        self.workdir = workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.workdir), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis_lib.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed: apt-get install redis-server (.ci/provision.sh does)")
    srv = RestartableRedis(tmp_path)
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def consume_one_unacked(url, transport):
    """A connection holding one delivered, unacknowledged message, consuming
    the auto-delete broadcast queue a Celery worker also consumes (its pidbox)."""
    conn = kombu.Connection(url, transport=transport)
    tasks = kombu.Queue("tasks")
    with conn.Producer() as producer:
        producer.publish({"n": 1}, routing_key="tasks", declare=[tasks])
    received = []
    broadcast = kombu.Queue("bcast", kombu.Exchange("bx", type="fanout"), auto_delete=True)
    consumer = conn.Consumer([tasks, broadcast], callbacks=[lambda body, m: received.append(m)])
    consumer.consume()
    # Until idle, as a worker waiting for more is: a BRPOP in flight when Redis goes.
    for _ in range(10):
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            break
    else:
        pytest.fail("the consumer never went idle")
    assert len(received) == 1
    return conn, received[0]


def lose_the_broker(server, conn):
    """What Celery's consumer does when Redis goes away under it."""
    server.stop()
    try:
        conn.collect(socket_timeout=1)
    except Exception:  # Celery ignores every error here
        pass
    conn.close()


def test_stock_kombu_still_has_the_bug_this_module_works_around(server):
    # If this fails after a kombu upgrade, upstream fixed it: drop the module.
    conn, _ = consume_one_unacked(server.url, "redis")
    with pytest.raises(AttributeError, match="hostname"):
        lose_the_broker(server, conn)


def test_a_lost_broker_closes_cleanly_and_running_tasks_still_ack(server):
    conn, message = consume_one_unacked(server.url, broker_transport.TRANSPORT)
    lose_the_broker(server, conn)  # no AttributeError
    client = server.start()
    assert client.hlen("unacked") == 1  # the running task's message, kept
    message.ack()
    assert client.hlen("unacked") == 0
    assert client.llen("tasks") == 0  # not delivered a second time


def test_closing_with_the_broker_up_still_gives_unacked_messages_back(server):
    conn, _ = consume_one_unacked(server.url, broker_transport.TRANSPORT)
    conn.close()
    client = redis_lib.Redis(port=server.port)
    assert client.hlen("unacked") == 0 and client.llen("tasks") == 1


def test_the_switch_and_the_version_check_choose_the_stock_transport(monkeypatch, caplog):
    def chosen(**env):
        settings = config.load({"REDIS_URL": "redis://redis:6379/0", **env}, need_secret=False)
        return broker.make_celery(settings).conf.broker_transport

    assert chosen() == broker_transport.TRANSPORT
    assert chosen(BROKER_TRANSPORT_FIX="0") is None
    monkeypatch.setattr(kombu, "__version__", "9.9.9")
    assert chosen() is None
    assert "kombu 9.9.9" in caplog.text


def test_every_connection_to_redis_gives_up_on_a_host_that_went_silent(server, monkeypatch):
    """A vanished host resets nothing: the store's, the broker's and the emitter's
    connections carry TCP keepalives and a 3-s TCP_USER_TIMEOUT, so a write or a
    BRPOP to it fails in seconds instead of waiting for TCP (minutes)."""
    settings = config.load(
        {"REDIS_URL": server.url, "SECRET_KEY": "0123456789abcdef" * 2}, need_secret=False
    )

    def gives_up(sock):
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3_000
        )

    store_client = store.redis_client(settings)
    store_client.ping()
    assert gives_up(store_client.connection_pool._available_connections[0]._sock)
    store_client.close()

    with broker.make_celery(settings).connection_for_write() as conn:
        client = conn.default_channel.client
        client.ping()
        assert gives_up(client.connection_pool._available_connections[0]._sock)

    monkeypatch.setenv("REDIS_URL", server.url)  # read when the worker module loads
    from taskbeam import worker

    runtime = worker.make_runtime(settings, redis_conn=store_client)
    runtime.emitter.socketio.emit("probe", {}, to="nobody")  # connects the manager
    manager = runtime.emitter.socketio.server.manager
    assert gives_up(manager.redis.connection_pool._available_connections[0]._sock)
    manager.redis.close()
