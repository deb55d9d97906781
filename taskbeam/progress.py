"""The API for task authors: report progress from inside a job with one call.

    from taskbeam import job, progress

    @job("resize", params=ResizeParams, units="images")
    def resize(params):
        for i, image in enumerate(params.images, 1):
            ...
            progress.update(i, len(params.images), f"Resized {image}")

No Flask app or context is needed: the worker framework routes the call to the
running task. A cancel request surfaces as :class:`Cancelled` raised from
``update``; let it propagate.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Callable, Iterator

MAX_MESSAGE_LENGTH = 500

#: ``callback(done, total, message)``: where :func:`update` sends a report.
Reporter = Callable[[float, float, str], object]

_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "taskbeam_reporter", default=None
)
_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "taskbeam_task_id", default=None
)
_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("taskbeam_run", default=None)
_stager: contextvars.ContextVar[Callable[[str], object] | None] = contextvars.ContextVar(
    "taskbeam_stager", default=None
)


class Cancelled(Exception):
    """Raised by :func:`update` when the task's owner asked to cancel it."""


class JobError(Exception):
    """A failure whose code and message the user may see (other exceptions are
    reported as ``internal_error`` without details).

    :param code: snake_case error code.
    :param message: human-readable text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def update(done: float, total: float, message: object = "") -> None:
    """Report that ``done`` of ``total`` units are finished.

    :param done: units finished so far (number >= 0).
    :param total: units in all (number >= 0); progress is ``done / total``, and
                  100 % when ``total`` is 0 (nothing to do).
    :param message: short human text shown beside the bar.
    :raises Cancelled: the task should stop now.
    """
    for name, value in (("done", done), ("total", total)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"progress.update: {name} must be a finite number >= 0, got {value!r}")
    reporter = _reporter.get()
    if reporter is None:
        raise RuntimeError("progress.update() called outside a Taskbeam job")
    reporter(done, total, str(message)[:MAX_MESSAGE_LENGTH])


def stage(name: str) -> None:
    """Enter the stage ``name``, one of the kind's declared ``stages``: the bar moves
    to where the stage starts, and later :func:`update` calls count within it.

    :raises ValueError: the kind declares no such stage.
    :raises Cancelled: the task should stop now.
    """
    stager = _stager.get()
    if stager is None:
        raise RuntimeError("progress.stage() called outside a Taskbeam job")
    stager(name)


def current_task_id() -> str:
    """The id of the task being run (e.g. to name its output files)."""
    task_id = _task_id.get()
    if task_id is None:
        raise RuntimeError("progress.current_task_id() called outside a Taskbeam job")
    return task_id


def current_run() -> str:
    """Names this run of the task: a task that is handed to another worker runs
    again under another name. Name files by it so two runs never share one."""
    run = _run.get()
    if run is None:
        raise RuntimeError("progress.current_run() called outside a Taskbeam job")
    return run


@contextlib.contextmanager
def reporting_to(
    callback: Reporter,
    task_id: str | None = None,
    run: str | None = None,
    on_stage: Callable[[str], object] | None = None,
) -> Iterator[Reporter]:
    """Route :func:`update` calls to ``callback(done, total, message)`` and
    :func:`stage` calls to ``on_stage(name)`` in this block.

    The worker uses it around every job; unit tests use it to capture progress.
    """
    reporter, task, of_run = _reporter.set(callback), _task_id.set(task_id), _run.set(run)
    stager = _stager.set(on_stage)
    try:
        yield callback
    finally:
        _reporter.reset(reporter)
        _task_id.reset(task)
        _run.reset(of_run)
        _stager.reset(stager)
