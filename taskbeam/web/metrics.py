"""Prometheus text-format metrics (`GET /metrics`, not proxied by Nginx: scrape each
`web` container on the Compose network, port 8000): counters of one web process,
and gauges of the whole deployment read from Redis, for autoscalers."""

import gc
import threading
import time

from .. import protocol
from .fastws import seams


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
        watch_gc()

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
        return _text(rows) + GC.render()


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
