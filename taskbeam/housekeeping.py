"""What a worker does besides running tasks, and the sends it shares with them.

Housekeeping, from a thread of the worker's main process (see
:mod:`taskbeam.worker`): tasks whose run lease expired are sent again
(:func:`requeue_orphans`), unfinished tasks with no lease and no broker message
too (:func:`sweep_stranded`), the worker counts itself alive while its consumer
runs (:func:`report_alive`, :class:`AliveFile`), and the workflows' held-back
roll-up events are flushed. A workflow's run sends its children and its fan-in
with the same :func:`send_again`.
"""

import json
import logging
import os
import socket
import time
from typing import Any

from celery import bootsteps

import redis

from . import broker, export, jobs, protocol, quotas
from .runtime import Runtime
from .store import TaskFinished, TaskGone

log = logging.getLogger(__name__)

# Container host names are unique per replica: the snapshot's `worker` field.
WORKER_NAME = socket.gethostname()
REAP_INTERVAL_S = 2.0
EXPORT_SWEEP_ROUNDS = 5  # expired exports are removed every 10 s
SWEEP_ROUNDS = 15  # unfinished tasks with no run and no message: looked for every 30 s
# A task younger than this may be between its creation and its message.
STRANDED_AFTER_S = 60.0
# worker/healthcheck.sh reads this file's age: a stat, where `celery inspect ping`
# would start a Celery client, about half a second of CPU per check per replica.
ALIVE_FILE = "/tmp/taskbeam-worker-alive"
ALIVE_EVERY_S = 2.0
ALIVE_STALE_S = 10.0  # as in worker/healthcheck.sh
ROLLUP_FLUSH_S = 0.5


def send_again(runtime: Runtime, rec: Any, connection: Any) -> None:
    """Put an unfinished task back on the queue (a kind no longer known fails)."""
    job = jobs.JOBS.get(rec.get("kind"))
    if job is None:
        message = f"Task kind {rec.get('kind')!r} is not known to the workers."
        try:
            runtime.emitter.emit(rec["id"], **protocol.failed("unknown_kind", message))
        except (TaskFinished, TaskGone):
            pass
        return
    runtime.celery.send_task(
        job.celery_name,
        args=[rec["id"], json.loads(rec["params"])],
        task_id=rec["id"],
        connection=connection,
    )


def send_children(runtime: Runtime, task_id: str) -> int:
    """Send a workflow's queued children to the workers; how many. A child sent
    twice (this run's first try died half-way) runs once: see
    :meth:`taskbeam.worker.TaskRun.__call__`."""
    ids = runtime.store.child_ids(task_id)
    pipe = runtime.store.redis.pipeline(transaction=False)
    for child in ids:
        pipe.hmget(runtime.store.keys.task(child), "state", "kind", "params")
    sent = 0
    with broker_connection(runtime) as connection:
        for child, (state, kind, params) in zip(ids, pipe.execute()):
            if state == protocol.QUEUED:
                send_again(runtime, {"id": child, "kind": kind, "params": params}, connection)
                sent += 1
    return sent


def send_parent(runtime: Runtime, task_id: str) -> None:
    """Send a workflow whose children all ended, for its fan-in. If this is lost, the
    sweeper sends it: it is unfinished, holds no lease and has no message."""
    rec = runtime.store.record(task_id)
    if rec is None:
        return
    try:
        send_again(runtime, rec, None)
    except Exception as exc:
        log.warning("workflow %s: fan-in not sent (%r); the sweeper will", task_id, exc)


def requeue_orphans(runtime: Runtime) -> int:
    """Send again every task whose run lease expired (its worker is gone or frozen).

    Each id on its own: one that cannot be sent gets its lease back, so the next
    round tries it again, and the others still go out.
    """
    orphans = runtime.store.reap_expired_leases()
    if not orphans:
        return 0
    sent = 0
    with broker_connection(runtime) as connection:
        for task_id in orphans:
            try:
                rec = runtime.store.record(task_id)
                if rec is None or rec["state"] in protocol.TERMINAL_STATES:
                    continue
                log.warning("task %s lost its worker; sending it again", task_id)
                send_again(runtime, rec, connection)
                sent += 1
            except Exception as exc:
                log.warning("could not send task %s again (%r); retrying next round", task_id, exc)
                try:
                    runtime.store.restore_lease(task_id)
                except redis.RedisError:
                    pass  # the sweeper finds it: unfinished, no lease, no message
    return sent


def broker_connection(runtime: Runtime) -> Any:
    """A broker connection of its own for housekeeping's sends, closed after each
    round: the app's pooled producer lives in the same process as the consumer,
    and after a broker restart kombu can leave it broken for good."""
    return runtime.celery.connection_for_write()


def sweep_stranded(runtime: Runtime) -> int:
    """Send again unfinished tasks that hold no lease and have no broker message.

    They are what a lost message (a Redis crash within its fsync window), a
    reaper that died between taking a lease and sending, or an older bug leaves
    behind: without this they would stay ``queued`` or ``running`` forever. One
    worker sweeps at a time.
    """
    lock = runtime.store.keys.sweeper
    if not runtime.store.redis.set(
        lock, WORKER_NAME, nx=True, ex=int(SWEEP_ROUNDS * REAP_INTERVAL_S) - 1
    ):
        return 0
    stranded = runtime.store.unfinished_without_run(STRANDED_AFTER_S)
    if not stranded:
        return 0
    queued = broker.queued_task_ids(runtime.store.redis, runtime.celery)
    if queued is None:
        log.warning("sweeper: the queue is too long to scan; skipped")
        return 0
    # A workflow waiting for its children runs nowhere by design.
    stranded = [
        rec for rec in stranded if rec["id"] not in queued and rec.get("phase") != "children"
    ]
    if stranded:
        with broker_connection(runtime) as connection:
            for rec in stranded:
                log.warning(
                    "task %s is %s with no worker and no queued message; sending it again",
                    rec["id"],
                    rec["state"],
                )
                send_again(runtime, rec, connection)
    return len(stranded)


def report_alive(runtime: Runtime) -> bool:
    """Count this worker in the metrics' ``taskbeam_workers_alive`` while its
    consumer runs (the alive file is fresh), not merely while the process exists."""
    try:
        age = time.time() - os.stat(ALIVE_FILE).st_mtime
    except FileNotFoundError:
        return False
    if age >= ALIVE_STALE_S:
        return False
    runtime.store.worker_alive(WORKER_NAME)
    return True


def housekeeping_forever(runtime: Runtime) -> None:
    """Every :data:`REAP_INTERVAL_S`: the rounds above, and the exports' clean-up."""
    rounds = 0
    while True:
        time.sleep(REAP_INTERVAL_S)
        rounds += 1
        try:
            report_alive(runtime)
            requeue_orphans(runtime)
            if rounds % SWEEP_ROUNDS == 0:
                sweep_stranded(runtime)
            # A deleted task's export goes within a round (DELETE /api/tasks/<id>).
            quotas.remove_forgotten_exports(runtime.store.redis, runtime.settings)
            if rounds % EXPORT_SWEEP_ROUNDS == 0:
                export.remove_expired_exports(runtime.settings)
                quotas.report_export_usage(runtime.store.redis, runtime.store, runtime.settings)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # Redis down: one line
            log.warning("housekeeping skipped: %s", exc)
        except Exception:  # a bad record: try again next round
            log.exception("housekeeping failed")


def flush_rollups_forever(runtime: Runtime) -> None:
    """Write the workflows' roll-up events that the 10-a-second cap held back (when
    no later child event carried them), so a parent's bar lags by at most this."""
    while True:
        time.sleep(ROLLUP_FLUSH_S)
        try:
            runtime.emitter.flush_rollups()
        except redis.RedisError as exc:  # Redis down: the next round catches up
            log.debug("roll-up flush skipped: %s", exc)
        except Exception:
            log.exception("roll-up flush failed")


class AliveFile(bootsteps.StartStopStep):
    """Touches :data:`ALIVE_FILE` from the consumer's event loop while it consumes.

    Celery stops consumer steps when the broker connection drops and starts them
    again once it is back, so the file goes stale when the worker is cut off from
    the broker or its loop is stuck, which is what the healthcheck reports.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.entry = None

    def start(self, consumer: Any) -> None:
        self.touch()
        self.entry = consumer.timer.call_repeatedly(ALIVE_EVERY_S, self.touch)

    def stop(self, consumer: Any) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None

    shutdown = stop

    @staticmethod
    def touch() -> None:
        with open(ALIVE_FILE, "a"):
            os.utime(ALIVE_FILE)
