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

A worker that is frozen rather than dead (a long pause, a VM stall, a network
cut longer than the lease) loses its tasks the same way; its runs are fenced
(see :mod:`taskbeam.store`), so when it thaws it writes nothing more. A sweeper
sends again any unfinished task that holds no lease and has no broker message.
Both run from :mod:`taskbeam.housekeeping`; this module runs the tasks.
"""

import logging
import os
import threading
import time
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

import redis

from . import config, housekeeping, jobs, observability, progress, protocol, registry, tracing
from .housekeeping import WORKER_NAME, send_children, send_parent
from .runtime import Runtime, make_runtime  # noqa: F401  (Runtime: for the tests)
from .store import LeaseLost, TaskFinished, TaskGone, TaskStore

log = logging.getLogger(__name__)

LEASE_S = 10.0


settings = config.current()
if settings.log_format == "json":
    # Ours instead of Celery's (and Tornado's, in Flower): a receiver of setup_logging
    # tells Celery to leave logging alone.
    observability.configure("json", os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    signals.setup_logging.connect(lambda **_: None, weak=False)
observability.drop_health_checks()  # Flower's /flower/healthcheck, every 10 s
# The team's own kinds (JOBS_MODULES) before the Celery tasks are made from JOBS.
registry.load_or_exit(settings.jobs_modules)
default_runtime = make_runtime(settings)  # what runs and housekeeping use unless given one
celery, store, emitter = default_runtime.celery, default_runtime.store, default_runtime.emitter


class TaskRun:
    """One delivery of a task, from its first state change to its terminal event.

    The run holds a lease with a token (see :mod:`taskbeam.store`). When it loses
    the lease (it was frozen past it and the task went to another worker), its
    next write or ``progress.update`` raises :class:`LeaseLost` and it ends
    without writing anything more.
    """

    def __init__(
        self, job: jobs.Job, task_id: str, params: Any, runtime: Runtime | None = None
    ) -> None:
        self.job, self.task_id, self.params = job, task_id, params
        self.runtime = runtime or default_runtime
        self.coalescer = protocol.Coalescer(
            self.runtime.settings.progress_coalesce_ms / 1000, time.monotonic
        )
        self.lease: Any = None  # the run's Lease, once it has one
        # The current stage's place on the bar, in percent: (start, width).
        self.span = (0.0, 100.0)

    def emit(self, **patch: Any) -> bool:
        """Persist and publish an event; True if the owner asked to cancel."""
        self.lease.check()
        event, written = self.runtime.emitter.write(self.task_id, token=self.lease.token, **patch)
        self.coalescer.note(event["state"])
        if written.fan_in_due:  # this child was its workflow's last: the fan-in is due
            send_parent(self.runtime, written.fan_in_due)
        return bool(written.cancel)

    def report(self, done: float, total: float, message: str) -> None:
        """Where the job's ``progress.update`` calls land."""
        self.lease.check()
        start, width = self.span
        pct = round(start + width * protocol.percent(done, total) / 100, 1)
        if self.coalescer.admit(protocol.RUNNING, pct):
            if self.emit(
                state=protocol.RUNNING, progress=pct, message=message, done=done, total=total
            ):
                raise progress.Cancelled()

    def enter_stage(self, name: str) -> None:
        """Where the job's ``progress.stage`` calls land: the bar moves to its start."""
        self.lease.check()
        self.span = self.job.stage_span(name)
        if self.emit(
            state=protocol.RUNNING, progress=round(self.span[0], 1), message=name, stage=name
        ):
            raise progress.Cancelled()

    def __call__(self) -> None:
        store = self.runtime.store
        try:
            token = store.claim_run(self.task_id, LEASE_S)
        except (TaskFinished, TaskGone) as exc:
            # Cancelled while queued, finished by an earlier delivery, or expired.
            log.info("task %s: nothing to do (%s)", self.task_id, exc)
            return
        if token is None:
            # A duplicate delivery (e.g. the broker restoring a message) of a task
            # that a live worker is running: that run owns it.
            log.info("task %s already runs elsewhere; dropping this delivery", self.task_id)
            return
        self.lease = Lease(store, self.task_id, token)
        try:
            with observability.bound(run=token), self.lease:
                self._run()
        except (TaskFinished, TaskGone) as exc:
            log.info("task %s: nothing more to do (%s)", self.task_id, exc)
        except LeaseLost:
            log.warning(
                "task %s: this run lost its lease (it was paused for longer than "
                "%.0f s) and another run took over; it stops here",
                self.task_id,
                LEASE_S,
            )
            return
        # Anything else (say, Redis refusing the terminal write) keeps the lease: it
        # expires and the reaper sends the task again, instead of leaving it running.
        store.release_lease(self.task_id, token)

    def _run(self) -> None:
        settings = self.runtime.settings
        rec = self.runtime.store.record(self.task_id) or {}
        phase = rec.get("phase", "")
        counter = "fanin_attempts" if phase == "fanin" else "attempts"
        attempt = self.runtime.store.count_attempt(self.task_id, counter)
        log.info("task %s: run %s starts (attempt %d)", self.task_id, self.lease.token, attempt)
        if rec.get("cancel") == "1":
            # Asked to stop before this run began: a workflow's child whose parent
            # failed or was cancelled, or a task whose worker died after the ask.
            self.emit(state=protocol.CANCELLED, message="Cancelled")
            return
        if attempt > settings.max_redeliveries + 1:
            self.emit(
                **protocol.failed(
                    "too_many_redeliveries",
                    f"Gave up after {attempt - 1} runs; its worker kept dying.",
                )
            )
            return
        if self.job.is_workflow:
            self._run_workflow(phase)
            return
        if attempt > 1:
            self.emit(
                state=protocol.RETRYING,
                progress=0,
                message=f"Worker lost; running again (attempt {attempt})",
            )
        if self.emit(state=protocol.RUNNING, message="Running", worker=WORKER_NAME):
            self.emit(state=protocol.CANCELLED, message="Cancelled")
            return
        self.emit(**self._execute(self.job.func))

    def _run_workflow(self, phase: str) -> None:
        """A workflow's run: first it sends its children to the workers (they were
        stored with it) and ends, leaving the parent running; the children's events
        roll it up. Once the last child ended, the fan-in runs here (a run of its
        own), or this run if the children were quicker than it."""
        store = self.runtime.store
        if phase == "":
            if self.emit(
                state=protocol.RUNNING, message="Starting the children", worker=WORKER_NAME
            ):
                self.emit(state=protocol.CANCELLED, message="Cancelled")
                self.runtime.emitter.cancel_children(self.task_id)
                return
            send_children(self.runtime, self.task_id)
            # Not over "fanin": the children may all have ended already.
            store.redis.hsetnx(store.keys.task(self.task_id), "phase", "children")
            phase = str(store.redis.hget(store.keys.task(self.task_id), "phase") or "")
        elif phase == "children":
            send_children(self.runtime, self.task_id)  # again: this run's first try may have died
        if phase != "fanin" or self.job.fan_in is None:
            return
        stage = self.job.stages[-1][0]
        self.span = self.job.stage_span(stage)
        if self.emit(state=protocol.RUNNING, message=stage, stage=stage, worker=WORKER_NAME):
            self.emit(state=protocol.CANCELLED, message="Cancelled")
            return
        fan_in = self.job.fan_in
        results = store.children_results(self.task_id)
        self.emit(**self._execute(lambda params: fan_in(params, results)))

    def _execute(self, func: Any) -> dict[str, Any]:
        """Run ``func`` (the job's function) with the params; the terminal event's fields."""
        try:
            params = self.job.load(self.params, self.runtime.settings)
            with progress.reporting_to(
                self.report,
                task_id=self.task_id,
                run=str(self.lease.token),
                on_stage=self.enter_stage,
            ):
                result = func(params)
        except progress.Cancelled:
            return {"state": protocol.CANCELLED, "message": "Cancelled"}
        except jobs.ParamError as exc:
            return protocol.failed("invalid_params", str(exc))
        except progress.JobError as exc:
            return protocol.failed(exc.code, exc.message)
        except SoftTimeLimitExceeded:
            # Raised wherever the job was, maybe between a Redis request and its reply
            # (a WAIT, a slow Redis): a connection put back with that reply still to
            # come would hand it to the next command. Close them all; the pool reopens.
            self.runtime.store.redis.connection_pool.disconnect()
            return protocol.failed(
                "time_limit",
                f"Stopped after the {self.runtime.settings.task_time_limit_s}s time limit.",
            )
        except (TaskFinished, TaskGone):
            raise
        except Exception:
            log.exception("job %s failed", self.job.kind)
            return protocol.failed("internal_error", "The task failed unexpectedly.")
        result = result if result is not None else {}
        return {
            "state": protocol.SUCCEEDED,
            "progress": 100,
            "message": self._summary(result),
            "result": result,
        }

    def _summary(self, result: Any) -> str:
        """The finished task's message: the kind's ``summary(result)``, or "Done"."""
        if self.job.summary is None:
            return "Done"
        try:
            return str(self.job.summary(result))[: progress.MAX_MESSAGE_LENGTH]
        except Exception:
            log.exception("job %s: summary(result) failed", self.job.kind)
            return "Done"


class Lease:
    """A run's lease, renewed from a thread while the run works.

    ``check()`` raises :class:`LeaseLost` once a renewal found that another run
    holds the task; the store refuses the lost run's writes in any case.
    """

    def __init__(self, store: TaskStore, task_id: str, token: int) -> None:
        self.store, self.task_id, self.token = store, task_id, token
        self.lost = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{task_id}")

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(self.task_id)

    def _renew(self) -> None:
        while not self.stop.wait(LEASE_S / 4):
            try:
                if not self.store.renew_lease(self.task_id, self.token, LEASE_S):
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # keep trying; the lease has slack
                log.warning("could not renew lease of %s: %s", self.task_id, exc)

    def __enter__(self) -> "Lease":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()


@signals.task_prerun.connect
def _bind_task_ids(task_id: str, task: Any, **_: Any) -> None:
    # The ids of the request that created the task (tasks.enqueue's headers).
    observability.bind(task_id=task_id, **observability.from_headers(task.request))


@signals.task_postrun.connect
def _unbind_task_ids(**_: Any) -> None:
    observability.clear()


@signals.worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    # In each prefork child: the span exporter's thread does not survive a fork.
    tracing.start("taskbeam-worker")


@signals.worker_process_shutdown.connect
def _flush_traces(**_: Any) -> None:
    tracing.flush()


@signals.worker_ready.connect
def _start_housekeeping(**_: Any) -> None:
    # In the worker's main process, which outlives the pool's child processes.
    loops = {
        "housekeeping": housekeeping.housekeeping_forever,
        "rollups": housekeeping.flush_rollups_forever,
    }
    for name, loop in loops.items():
        threading.Thread(target=loop, args=(default_runtime,), daemon=True, name=name).start()


celery.steps["consumer"].add(housekeeping.AliveFile)


def _register(job: jobs.Job) -> Any:
    @celery.task(name=job.celery_name)
    def run_job(task_id: str, params: Any) -> None:
        TaskRun(job, task_id, params)()

    return run_job


TASKS = {kind: _register(job) for kind, job in jobs.JOBS.items()}
