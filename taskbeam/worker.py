"""The Celery worker: ``celery -A taskbeam.worker worker``.

Runs every registered job as a Celery task and emits its state changes
(``running``, ``retrying``, and exactly one terminal event), so a job only
reports progress. Events go out through Flask-SocketIO's external emitter: a
``SocketIO(message_queue=...)`` with no Flask app and no app context.

A run holds a lease in Redis that it renews while it works. When a worker dies
(SIGKILL, OOM, a host gone, a scale-down that outlasts the grace period), its
leases expire and any live worker sends the task again: it runs elsewhere
within about ``LEASE_S + REAP_INTERVAL_S`` seconds instead of waiting for the
broker's visibility timeout, which must stay longer than the task time limit.
"""
import json
import logging
import os
import socket
import threading
import time

import redis
from celery import bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded
from flask_socketio import SocketIO

from . import config, export, jobs, progress, protocol
from .broker import make_celery
from .emitter import Emitter
from .store import TaskFinished, TaskGone, TaskStore, redis_client

log = logging.getLogger(__name__)

settings = config.current()
celery = make_celery(settings)
store = TaskStore(redis_client(settings), settings)
emitter = Emitter(store, SocketIO(message_queue=settings.redis_url,
                                  channel=settings.socketio_channel))
# Container host names are unique per replica: the snapshot's `worker` field.
WORKER_NAME = socket.gethostname()
LEASE_S = 10.0
REAP_INTERVAL_S = 2.0
EXPORT_SWEEP_ROUNDS = 5  # expired exports are removed every 10 s
# worker/healthcheck.sh reads this file's age: a stat, where `celery inspect ping`
# would start a Celery client, about half a second of CPU per check per replica.
ALIVE_FILE = "/tmp/taskbeam-worker-alive"
ALIVE_EVERY_S = 2.0


def _error(code, message):
    return {"state": protocol.FAILED, "message": message,
            "error": {"code": code, "message": message}}


class TaskRun:
    """One delivery of a task, from its first state change to its terminal event."""

    def __init__(self, job, task_id, params):
        self.job, self.task_id, self.params = job, task_id, params
        self.coalescer = protocol.Coalescer(settings.progress_coalesce_ms / 1000,
                                            time.monotonic)

    def emit(self, **patch):
        """Persist and publish an event; True if the owner asked to cancel."""
        event, cancel = emitter.emit(self.task_id, **patch)
        self.coalescer.note(event["state"])
        return cancel

    def report(self, done, total, message):
        """Where the job's ``progress.update`` calls land."""
        pct = protocol.percent(done, total)
        if self.coalescer.admit(protocol.RUNNING, pct):
            _, cancel = emitter.emit(self.task_id, state=protocol.RUNNING, progress=pct,
                                     message=message)
            if cancel:
                raise progress.Cancelled()

    def __call__(self):
        if not store.claim_run(self.task_id, LEASE_S):
            # A duplicate delivery (e.g. the broker restoring a message) of a task
            # that a live worker is running: that run owns it.
            log.info("task %s already runs elsewhere; dropping this delivery", self.task_id)
            return
        try:
            with _renewing_lease(self.task_id):
                self._run()
        except (TaskFinished, TaskGone) as exc:
            # Cancelled while queued, finished by an earlier delivery, or expired.
            log.info("task %s: nothing to do (%s)", self.task_id, exc)
        finally:
            store.release_lease(self.task_id)

    def _run(self):
        attempt = store.count_attempt(self.task_id)
        if attempt > settings.max_redeliveries + 1:
            self.emit(**_error("too_many_redeliveries",
                               f"Gave up after {attempt - 1} runs; its worker kept dying."))
            return
        if attempt > 1:
            self.emit(state=protocol.RETRYING, progress=0,
                      message=f"Worker lost; running again (attempt {attempt})")
        if self.emit(state=protocol.RUNNING, message="Running", worker=WORKER_NAME):
            self.emit(state=protocol.CANCELLED, message="Cancelled")
            return
        self.emit(**self._execute())

    def _execute(self):
        """Run the job's function; return the terminal event's fields."""
        try:
            params = self.job.validate(self.params)
            with progress.reporting_to(self.report, task_id=self.task_id):
                result = self.job.func(params)
        except progress.Cancelled:
            return {"state": protocol.CANCELLED, "message": "Cancelled"}
        except jobs.ParamError as exc:
            return _error("invalid_params", str(exc))
        except progress.JobError as exc:
            return _error(exc.code, exc.message)
        except SoftTimeLimitExceeded:
            return _error("time_limit",
                          f"Stopped after the {settings.task_time_limit_s}s time limit.")
        except (TaskFinished, TaskGone):
            raise
        except Exception:
            log.exception("job %s failed", self.job.kind)
            return _error("internal_error", "The task failed unexpectedly.")
        return {"state": protocol.SUCCEEDED, "progress": 100, "message": "Done",
                "result": result if result is not None else {}}


class _renewing_lease:
    """Renews the task's lease from a thread while the job runs."""

    def __init__(self, task_id):
        self.task_id = task_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True,
                                       name=f"lease-{task_id}")

    def _renew(self):
        while not self.stop.wait(LEASE_S / 4):
            try:
                store.renew_lease(self.task_id, LEASE_S)
            except redis.RedisError as exc:  # keep trying; the lease has slack
                log.warning("could not renew lease of %s: %s", self.task_id, exc)

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()


def requeue_orphans():
    """Send again every task whose run lease expired (its worker is gone)."""
    for task_id in store.reap_expired_leases():
        rec = store.record(task_id)
        job = jobs.JOBS.get(rec.get("kind")) if rec else None
        if job is None or rec["state"] in protocol.TERMINAL_STATES:
            continue
        log.warning("task %s lost its worker; sending it again", task_id)
        celery.send_task(job.celery_name, args=[task_id, json.loads(rec["params"])],
                         task_id=task_id)


def _housekeeping_forever():
    rounds = 0
    while True:
        time.sleep(REAP_INTERVAL_S)
        rounds += 1
        try:
            requeue_orphans()
            if rounds % EXPORT_SWEEP_ROUNDS == 0:
                export.remove_expired_exports(settings)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # Redis down: one line
            log.warning("housekeeping skipped: %s", exc)
        except Exception:  # a bad record: try again next round
            log.exception("housekeeping failed")


@signals.worker_ready.connect
def _start_housekeeping(**_):
    # In the worker's main process, which outlives the pool's child processes.
    threading.Thread(target=_housekeeping_forever, daemon=True, name="housekeeping").start()


class AliveFile(bootsteps.StartStopStep):
    """Touches :data:`ALIVE_FILE` from the consumer's event loop while it consumes.

    Celery stops consumer steps when the broker connection drops and starts them
    again once it is back, so the file goes stale when the worker is cut off from
    the broker or its loop is stuck, which is what the healthcheck reports.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer, **kwargs):
        super().__init__(consumer, **kwargs)
        self.entry = None

    def start(self, consumer):
        self.touch()
        self.entry = consumer.timer.call_repeatedly(ALIVE_EVERY_S, self.touch)

    def stop(self, consumer):
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None

    shutdown = stop

    @staticmethod
    def touch():
        with open(ALIVE_FILE, "a"):
            os.utime(ALIVE_FILE)


celery.steps["consumer"].add(AliveFile)


def _register(job):
    @celery.task(name=job.celery_name)
    def run_job(task_id, params):
        TaskRun(job, task_id, params)()

    return run_job


TASKS = {kind: _register(job) for kind, job in jobs.JOBS.items()}
