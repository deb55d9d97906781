"""Prometheus text-format metrics (`GET /metrics`, not proxied by Nginx: scrape each
`web` container on the Compose network, port 8000): counters of one web process,
and gauges of the whole deployment read from Redis, for autoscalers and the alert
rules of deploy/monitoring/."""

import gc
import threading
import time

from flask import request
from redis.exceptions import ResponseError

from .. import protocol
from ..store import Keys
from .fastws import seams

# Not counted in taskbeam_http_responses_total: health checks and scrapes arrive every
# few seconds whatever the traffic, and would dilute the error rate the alerts read.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Metrics:
    """Counters of one web process, owned by the app's services; updated by the
    message-queue listener and the socket handlers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events_received = 0  # task events this process got from the queue
        self.events_delivered = 0  # ... times the sockets they were sent to
        self.replays_served = 0  # events sent in subscribe acks (`missed`)
        self.subscribes = 0
        self.lag_sum = 0.0  # emitter clock → this listener, seconds
        self.lag_last = 0.0
        self.mq_reads = 0  # socket reads of the message-queue listener ...
        self.mq_messages = 0  # ... and the messages they brought
        self.responses = {}  # HTTP status -> answers (a few dozen statuses at most)
        watch_gc()

    def count_responses(self, app):
        """Count ``app``'s answers by status (an unhandled error's 500 too: Flask runs
        ``after_request`` for it), the :data:`PROBE_PATHS` left out."""

        @app.after_request
        def count(response):
            if request.path not in PROBE_PATHS:
                with self.lock:
                    status = response.status_code
                    self.responses[status] = self.responses.get(status, 0) + 1
            return response

    def read(self, messages):
        """One socket read of the message-queue listener brought ``messages`` messages."""
        with self.lock:
            self.mq_reads += 1
            self.mq_messages += messages

    def delivered(self, message, recipients):
        """A message from the queue went to ``recipients`` sockets (the fast listener)."""
        if is_task_update(message):
            self.event_received(message["data"][0].get("ts"), recipients)

    def counted(self, recipients):
        """A task event went to ``recipients`` sockets (the stock listener: no lag known)."""
        with self.lock:
            self.events_received += 1
            self.events_delivered += recipients

    def event_received(self, ts, recipients):
        """A task event emitted at ``ts`` (seconds on the emitter's clock, a number or
        its text; None if unknown) went to ``recipients`` sockets."""
        try:
            lag = max(time.time() - float(ts), 0.0)
        except (TypeError, ValueError):
            lag = 0.0
        with self.lock:
            self.events_received += 1
            self.events_delivered += recipients
            self.lag_sum += lag
            self.lag_last = lag

    def replayed(self, count):
        with self.lock:
            self.subscribes += 1
            self.replays_served += count

    def render(self, manager):
        rooms = seams.rooms(manager).get("/", {})
        connected = len(rooms.get(None, {}))
        subscriptions = sum(
            len(members)
            for name, members in rooms.items()
            if isinstance(name, str) and name.startswith("task:")
        )
        with self.lock:
            rows = [
                (
                    "taskbeam_connected_clients",
                    "gauge",
                    "Sockets connected to this process.",
                    connected,
                ),
                (
                    "taskbeam_subscriptions",
                    "gauge",
                    "Task subscriptions held by those sockets.",
                    subscriptions,
                ),
                (
                    "taskbeam_events_received_total",
                    "counter",
                    "Task events received from the message queue.",
                    self.events_received,
                ),
                (
                    "taskbeam_events_delivered_total",
                    "counter",
                    "Task events sent to sockets (one per recipient).",
                    self.events_delivered,
                ),
                (
                    "taskbeam_subscribes_total",
                    "counter",
                    "Successful subscribe requests.",
                    self.subscribes,
                ),
                (
                    "taskbeam_replays_served_total",
                    "counter",
                    "Stored events sent in subscribe acks.",
                    self.replays_served,
                ),
                (
                    "taskbeam_mq_lag_seconds_sum",
                    "counter",
                    "Sum of emit-to-receive delays of task events.",
                    round(self.lag_sum, 6),
                ),
                (
                    "taskbeam_mq_lag_seconds_last",
                    "gauge",
                    "Emit-to-receive delay of the latest task event.",
                    round(self.lag_last, 6),
                ),
                (
                    "taskbeam_mq_room_channels",
                    "gauge",
                    "Room channels this process's message-queue listener subscribes to.",
                    len(getattr(manager, "room_channels", ())),
                ),
                (
                    "taskbeam_mq_reads_total",
                    "counter",
                    "Socket reads of the message-queue listener (fast transport).",
                    self.mq_reads,
                ),
                (
                    "taskbeam_mq_messages_total",
                    "counter",
                    "Messages those reads brought (messages per read: the batch size).",
                    self.mq_messages,
                ),
                (
                    "taskbeam_fast_transport",
                    "gauge",
                    "1: the fast WebSocket transport (fastws); 0: stock python-engineio/socketio.",
                    int(getattr(manager, "fast_transport", False)),
                ),
            ]
            responses = sorted(self.responses.items())
        name = "taskbeam_http_responses_total"
        lines = [
            f"# HELP {name} HTTP answers of this process by status (probes excluded).",
            f"# TYPE {name} counter",
        ]
        lines += [f'{name}{{code="{code}"}} {count}' for code, count in responses]
        return _text(rows) + "\n".join(lines) + "\n" + GC.render()


class GcWatch:
    """The cyclic GC's collections in this process and how long they paused it, per
    generation (``gc.callbacks``): a full collection stops every socket at once."""

    def __init__(self):
        self.collections = [0, 0, 0]
        self.pause_s = [0.0, 0.0, 0.0]
        self.started = 0.0

    def hook(self, phase, info):
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.collections[info["generation"]] += 1
            self.pause_s[info["generation"]] += time.perf_counter() - self.started

    def render(self):
        lines = []
        for name, kind, text, values in (
            ("taskbeam_gc_collections_total", "counter", "Garbage collections.", self.collections),
            (
                "taskbeam_gc_pause_seconds_total",
                "counter",
                "Time the process spent in garbage collections.",
                [round(v, 6) for v in self.pause_s],
            ),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{generation="{g}"}} {v}' for g, v in enumerate(values)]
        return "\n".join(lines) + "\n"


GC = GcWatch()


def watch_gc():
    """Start counting collections (once per process, however many apps it makes)."""
    if GC.hook not in gc.callbacks:
        gc.callbacks.append(GC.hook)


# The deployment's gauges (the same from every web process): name, help text.
OPERATOR_GAUGES = (
    (
        "taskbeam_queue_length",
        "Messages waiting in the broker's queue (reserved ones excluded).",
    ),
    ("taskbeam_tasks_queued", "Tasks created and not started yet."),
    (
        "taskbeam_oldest_queued_age_seconds",
        "Age of the oldest task not started yet (0: none waits).",
    ),
    ("taskbeam_tasks_running", "Tasks running on a worker (holding a lease)."),
    ("taskbeam_workers_alive", "Workers whose consumer reported in the last 15 s."),
)


def render_operator_gauges(values):
    """The gauges of :data:`OPERATOR_GAUGES` from ``values`` (name without prefix)."""
    return _text(
        [
            (name, "gauge", text, values[name.removeprefix("taskbeam_")])
            for name, text in OPERATOR_GAUGES
        ]
    )


# The deployment's resources, read on each scrape for the alert rules: name, help text,
# source (``memory``: Redis's INFO memory; ``exports``: the exports volume as a worker
# last measured it, taskbeam.quotas.report_export_usage) and field.
RESOURCE_GAUGES = (
    (
        "taskbeam_redis_used_memory_bytes",
        "Memory Redis uses (INFO memory: used_memory).",
        "memory",
        "used_memory",
    ),
    (
        "taskbeam_redis_maxmemory_bytes",
        "Redis's memory cap (maxmemory; 0: none).",
        "memory",
        "maxmemory",
    ),
    ("taskbeam_export_volume_size_bytes", "Size of the exports volume.", "exports", "size"),
    (
        "taskbeam_export_volume_free_bytes",
        "Free space on the exports volume.",
        "exports",
        "free",
    ),
    (
        "taskbeam_export_volume_floor_bytes",
        "Free space at or below which exports are refused and stopped (EXPORT_MIN_FREE_PCT).",
        "exports",
        "floor",
    ),
    ("taskbeam_exports_stored_bytes", "Bytes of the stored export files.", "exports", "used"),
    (
        "taskbeam_exports_cap_bytes",
        "Stored export bytes at which new exports are refused (EXPORT_QUOTA_BYTES).",
        "exports",
        "cap",
    ),
)


def resource_gauges(redis, settings):
    """The gauges of :data:`RESOURCE_GAUGES`, as Prometheus text. Redis's are left out
    when this Redis user may not run INFO; the volume's when no worker measured it in
    the last two minutes (the figures expire: stale ones would hide a full volume)."""
    try:
        sources = {"memory": redis.info("memory")}
    except ResponseError:  # INFO refused to this user: the other gauges still answer
        sources = {}
    sources["exports"] = redis.hgetall(Keys(settings.namespace).exports_usage)
    return _text(
        [
            (name, "gauge", text, int(float(sources[source][field])))
            for name, text, source, field in RESOURCE_GAUGES
            if field in sources.get(source, {})
        ]
    )


def _text(rows):
    lines = []
    for name, kind, text, value in rows:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


def is_task_update(message):
    return (
        message.get("event") == protocol.TASK_UPDATE_EVENT
        and isinstance(message.get("data"), list)
        and message["data"]
        and isinstance(message["data"][0], dict)
    )
