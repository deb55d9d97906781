# Gunicorn settings for the web role; values from the environment where tunable.
import fcntl
import os
import socket
import struct


def interface_address(name):
    """IPv4 address of the network interface ``name`` (ioctl SIOCGIFADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("256s", name.encode()[:15])
        try:
            return socket.inet_ntoa(fcntl.ioctl(probe.fileno(), 0x8915, request)[20:24])
        except OSError as exc:
            raise SystemExit(
                f"taskbeam-web: WEB_LISTEN_INTERFACE={name}: no such interface with an "
                f"IPv4 address ({exc.strerror})"
            ) from None


# WEB_LISTEN_INTERFACE (docker-compose.yml: front0, the interface on the network Nginx
# shares): listen there and on loopback only, so the workers and Redis, which share
# the back network with web, cannot reach it. Empty: every interface (a pod's one).
_interface = os.environ.get("WEB_LISTEN_INTERFACE", "").strip()
bind = ["127.0.0.1:8000", f"{interface_address(_interface)}:8000"] if _interface else "0.0.0.0:8000"
# One worker per container: Gunicorn cannot route a Socket.IO session back to the
# worker that holds it, so scale with more `web` containers instead.
workers = 1
# gevent-websocket's worker (plain `-k gevent` fails WebSockets), closing the clients'
# connections on shutdown; with the fast transport, one keeping less per connection
# (taskbeam/gunicorn_worker.py). WEB_FAST_TRANSPORT as taskbeam/config.py reads it,
# which is not imported here: the master must not import redis (and ssl) before the
# worker monkey-patches. A bad value stops web/start.sh's settings check first.
fast_transport = os.environ.get("WEB_FAST_TRANSPORT", "1").strip().lower() not in (
    "0",
    "false",
    "no",
    "off",
)
worker_class = (
    "taskbeam.gunicorn_worker.Worker" if fast_transport else "taskbeam.gunicorn_worker.StockWorker"
)
# Gunicorn's default of 1000 would cap connected browsers per container.
worker_connections = int(os.environ.get("WEB_MAX_CONNECTIONS", "10000"))
graceful_timeout = 10
keepalive = 75
errorlog = "-"
loglevel = "info"
# LOG_FORMAT=json: Gunicorn's own lines as JSON too (taskbeam/observability.py). No
# access log: Nginx writes one (JSON, with the request id), without health checks.
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    from taskbeam.observability import gunicorn_logconfig

    logconfig_dict = gunicorn_logconfig("json")
# Gunicorn 27's control socket (for `gunicornc`) would live in an unwritable home.
control_socket_disable = True


def post_worker_init(worker):
    # The app's modules and objects live as long as the process: keep them out of
    # the cyclic GC, whose full collections over them paused every socket for
    # 20-65 ms under load (gc.callbacks timing, `make bench` fan-in).
    import gc

    gc.freeze()
