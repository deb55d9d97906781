"""The Celery application as both sides configure it: web sends, worker runs."""
from celery import Celery

# A task may be redelivered only after the broker stops hearing from its worker
# for this long beyond the task's time limit (kombu's Redis visibility timeout).
VISIBILITY_MARGIN_S = 300


def make_celery(settings):
    """A Celery app on ``REDIS_URL`` with the reliability preset.

    Late acks plus reject-on-worker-lost mean a task whose worker dies is
    delivered again instead of vanishing; prefetch 1 keeps queued work on the
    broker, where any replica can take it.
    """
    app = Celery("taskbeam", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.task_time_limit_s + VISIBILITY_MARGIN_S,
            # Keeps two deployments sharing one Redis out of each other's queues.
            "global_keyprefix": f"{settings.namespace}:celery:",
        },
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
