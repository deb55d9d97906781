"""The Celery application as both sides configure it: web sends, worker runs."""

import json
import ssl

from celery import Celery

from . import broker_transport, sentinel
from .store import DEAD_PEER_OPTIONS, Keys, redis_tls

# A task may be redelivered only after the broker stops hearing from its worker
# for this long beyond the task's time limit (kombu's Redis visibility timeout).
VISIBILITY_MARGIN_S = 300


def make_celery(settings):
    """A Celery app on ``REDIS_URL`` with the reliability preset.

    Late acks plus reject-on-worker-lost mean a task whose worker dies is
    delivered again instead of vanishing; prefetch 1 keeps queued work on the
    broker, where any replica can take it.
    """
    url, ha = settings.redis_url, sentinel.is_sentinel_url(settings.redis_url)
    options = {
        "visibility_timeout": settings.task_time_limit_s + VISIBILITY_MARGIN_S,
        # Keeps two deployments sharing one Redis out of each other's queues.
        "global_keyprefix": Keys(settings.namespace).celery_prefix,
        # Bounded waits: a publish to, or a BRPOP on, a Redis that vanished gives up
        # and reconnects. The BRPOP check (kombu's, every 5 s) covers a frozen one.
        **DEAD_PEER_OPTIONS,
        "socket_timeout": 10,
        "socket_connect_timeout": 3,
        "health_check_interval": 5,
    }
    if ha:  # kombu's Sentinel transport: its own URL form, the master's name apart
        url = sentinel.broker_url(url)
        options.update(
            master_name=sentinel.master_name(settings.redis_url),
            # Bounded waits on a Sentinel that is down or cut off; TLS and credentials
            # as to the data nodes.
            sentinel_kwargs={
                "socket_timeout": 3,
                "socket_connect_timeout": 3,
                **redis_tls(settings),
                **sentinel.auth(settings.redis_url),
            },
        )
    app = Celery("taskbeam", broker=url, set_as_current=False)
    if sentinel.uses_tls(settings.redis_url):  # the data nodes' certificates, checked
        ca_file = settings.redis_tls_ca_file or None
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": ca_file}
    app.conf.update(
        # kombu's Redis transport, or ours that survives a broker restart (see there).
        broker_transport=broker_transport.selected(settings.broker_transport_fix, sentinel=ha),
        broker_connection_retry_on_startup=True,
        broker_transport_options=options,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 5, 1),
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # SIGTERM (scale-down, restart): finish or give back running tasks in time.
        worker_soft_shutdown_timeout=10.0,
        worker_enable_soft_shutdown_on_idle=True,
    )
    return app


# kombu's Redis transport keeps a queue's messages in one list per priority step
# (``queue``, ``queue\x06\x163``, ...) and delivered, unacknowledged ones in a hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
MAX_SCANNED_MESSAGES = 100_000


def queue_lists(app):
    """The Redis lists that hold the default queue's waiting messages (what KEDA's
    Redis scaler reads: ``<namespace>:celery:celery``, plus one per priority step)."""
    prefix = app.conf.broker_transport_options["global_keyprefix"]
    queue = app.conf.task_default_queue
    return [f"{prefix}{queue}"] + [
        f"{prefix}{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS[1:]
    ]


def queue_length(redis, app):
    """Messages waiting in the broker; those a worker has reserved are not counted."""
    pipe = redis.pipeline(transaction=False)
    for key in queue_lists(app):
        pipe.llen(key)
    return sum(pipe.execute())


def queued_task_ids(redis, app):
    """Ids of the tasks that have a message in the broker: waiting in the default
    queue or delivered to a worker and not acknowledged yet.

    :returns: a set, or None when the queue is longer than
              :data:`MAX_SCANNED_MESSAGES` (too many to tell).
    """
    prefix = app.conf.broker_transport_options["global_keyprefix"]
    lists = queue_lists(app)
    pipe = redis.pipeline(transaction=False)
    for key in lists:
        pipe.llen(key)
    if sum(pipe.execute()) > MAX_SCANNED_MESSAGES:
        return None
    for key in lists:
        pipe.lrange(key, 0, -1)
    pipe.hvals(f"{prefix}unacked")
    *waiting, unacked = pipe.execute()
    ids = set()
    for raw in (m for messages in waiting for m in messages):
        ids.add(json.loads(raw).get("headers", {}).get("id"))
    for raw in unacked:  # [message, exchange, routing_key]
        ids.add(json.loads(raw)[0].get("headers", {}).get("id"))
    ids.discard(None)
    return ids
