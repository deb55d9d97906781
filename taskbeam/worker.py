"""The Celery worker: ``celery -A taskbeam.worker worker``.

Runs every registered job as a Celery task and emits its state changes
(``running``, ``retrying``, and exactly one terminal event), so a job only
reports progress. Events go out through Flask-SocketIO's external emitter: a
``SocketIO(message_queue=...)`` with no Flask app and no app context.
"""
import logging
import socket
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from flask_socketio import SocketIO

from . import config, jobs, progress, protocol
from .broker import make_celery
from .emitter import Emitter
from .store import TaskFinished, TaskGone, TaskStore

log = logging.getLogger(__name__)

settings = config.load_or_exit(need_secret=False)
celery = make_celery(settings)
store = TaskStore(redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                       socket_timeout=5, socket_connect_timeout=3,
                                       health_check_interval=30), settings)
emitter = Emitter(store, SocketIO(message_queue=settings.redis_url,
                                  channel=settings.socketio_channel))
# Container host names are unique per replica: the snapshot's `worker` field.
WORKER_NAME = socket.gethostname()


def _error(code, message):
    return {"state": protocol.FAILED, "message": message,
            "error": {"code": code, "message": message}}


def run(job, task_id, params):
    """Run one delivery of a task, from its first state change to its terminal event."""
    coalescer = protocol.Coalescer(settings.progress_coalesce_ms / 1000, time.monotonic)

    def emit(**patch):
        event, cancel = emitter.emit(task_id, **patch)
        coalescer.note(event["state"])
        return cancel

    def report(done, total, message):
        pct = protocol.percent(done, total)
        if coalescer.admit(protocol.RUNNING, pct):
            _, cancel = emitter.emit(task_id, state=protocol.RUNNING, progress=pct,
                                     message=message)
            if cancel:
                raise progress.Cancelled()

    try:
        attempt = store.count_attempt(task_id)
        if attempt > settings.max_redeliveries + 1:
            emit(**_error("too_many_redeliveries",
                          f"Gave up after {attempt - 1} deliveries; the worker kept dying."))
            return
        if attempt > 1:
            emit(state=protocol.RETRYING, progress=0,
                 message=f"Worker lost; running again (attempt {attempt})")
        if emit(state=protocol.RUNNING, message="Running", worker=WORKER_NAME):
            emit(state=protocol.CANCELLED, message="Cancelled")
            return
        outcome = _execute(job, params, report)
        emit(**outcome)
    except (TaskFinished, TaskGone) as exc:
        # Cancelled while queued, finished by an earlier delivery, or expired.
        log.info("task %s: nothing to do (%s)", task_id, exc)


def _execute(job, params, report):
    """Run the job's function; return the terminal event's fields."""
    try:
        params = job.validate(params)
        with progress.reporting_to(report):
            result = job.func(params)
    except progress.Cancelled:
        return {"state": protocol.CANCELLED, "message": "Cancelled"}
    except jobs.ParamError as exc:
        return _error("invalid_params", str(exc))
    except progress.JobError as exc:
        return _error(exc.code, exc.message)
    except SoftTimeLimitExceeded:
        return _error("time_limit", f"Stopped after the {settings.task_time_limit_s}s time limit.")
    except (TaskFinished, TaskGone):
        raise
    except Exception:
        log.exception("job %s failed", job.kind)
        return _error("internal_error", "The task failed unexpectedly.")
    return {"state": protocol.SUCCEEDED, "progress": 100, "message": "Done",
            "result": result if result is not None else {}}


def _register(job):
    @celery.task(name=job.celery_name)
    def run_job(task_id, params):
        run(job, task_id, params)

    return run_job


TASKS = {kind: _register(job) for kind, job in jobs.JOBS.items()}
