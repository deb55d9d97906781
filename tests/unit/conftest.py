"""Fixtures shared by the unit tests.

``redis_server`` starts a real ``redis-server`` (Debian's package, installed by
.ci/provision.sh) on a Unix socket of its own, so the store's Lua scripts and the
listener's parser are tested against the real thing without touching any port.
"""

import gc
import os
import shutil
import subprocess
import time

import greenlet
import pytest

import redis as redis_lib

# The unit tests choose the transport themselves (WEB_FAST_TRANSPORT=0 in the shell
# that runs them, e.g. for a stock-mode stack, must not switch the fast path off here).
os.environ.pop("WEB_FAST_TRANSPORT", None)

# Every kind a process has at start-up (the shipped ones and jobs/, as JOBS_MODULES=jobs
# loads them), whichever test runs first: no test may depend on another's imports.
from taskbeam import config, registry  # noqa: E402
from taskbeam.store import TaskStore  # noqa: E402

registry.load_modules(["jobs"])


def wait_until_serving(client, proc, timeout=10):
    """Until the redis-server ``proc`` answers ``client`` (closed afterwards)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return client.close()
        except redis_lib.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Path of the Unix socket of a throwaway Redis (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed: apt-get install redis-server (.ci/provision.sh does)")
    sock = str(tmp_path_factory.mktemp("redis") / "redis.sock")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    wait_until_serving(redis_lib.Redis(unix_socket_path=sock), proc)
    yield sock
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def settings():
    """Settings of a deployment named ``t`` (a module may define its own)."""
    return config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t"}, need_secret=False
    )


@pytest.fixture
def store(redis_client, settings):
    """A TaskStore on the throwaway Redis."""
    return TaskStore(redis_client, settings)


@pytest.fixture
def redis_client(redis_server):
    """A client of the throwaway Redis, emptied before each test."""
    client = redis_lib.Redis(unix_socket_path=redis_server, decode_responses=True)
    client.flushall()
    yield client
    client.close()


def client_frame(opcode, payload, fin=True, key=b"\x01\x02\x03\x04", masked=True, rsv=0):
    """A WebSocket frame as a client sends it (RFC 6455 5.2: masked unless told not)."""
    size = len(payload)
    if size < 126:
        length = bytes((0x80 * masked | size,))
    elif size < 1 << 16:
        length = bytes((0x80 * masked | 126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((0x80 * masked | 127,)) + size.to_bytes(8, "big")
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if masked else payload
    return bytes((0x80 * fin | rsv | opcode,)) + length + (key if masked else b"") + body


def live_greenlets():
    """The live greenlets of this thread's hub, as a set: a test compares which, not how
    many (another test's greenlet ending meanwhile must not hide a new one). Greenlets of
    other threads (gevent's thread pool, another test's threading engine.io server) start
    and stop on their own schedule: they are not this hub's, and not counted."""
    import gevent

    hub = gevent.get_hub()
    # type(), not isinstance(): a dead weak proxy among gc's objects raises on the latter.
    return {
        o
        for o in gc.get_objects()
        if issubclass(type(o), greenlet.greenlet) and not o.dead and o.parent is hub
    }
