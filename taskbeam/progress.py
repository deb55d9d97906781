"""The API for task authors: report progress from inside a job with one call.

    from taskbeam import progress

    @job("resize")
    def resize(params):
        for i, image in enumerate(images, 1):
            ...
            progress.update(i, len(images), f"Resized {image}")

No Flask app or context is needed: the worker framework routes the call to the
running task. A cancel request surfaces as :class:`Cancelled` raised from
``update``; let it propagate.
"""
import contextlib
import contextvars
import math
import numbers

MAX_MESSAGE_LENGTH = 500

_reporter = contextvars.ContextVar("taskbeam_reporter", default=None)
_task_id = contextvars.ContextVar("taskbeam_task_id", default=None)


class Cancelled(Exception):
    """Raised by :func:`update` when the task's owner asked to cancel it."""


class JobError(Exception):
    """A failure whose code and message the user may see (other exceptions are
    reported as ``internal_error`` without details).

    :param code: snake_case error code.
    :param message: human-readable text.
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def update(done, total, message=""):
    """Report that ``done`` of ``total`` units are finished.

    :param done: units finished so far (number >= 0).
    :param total: units in all (number >= 0); progress is ``done / total``, and
                  100 % when ``total`` is 0 (nothing to do).
    :param message: short human text shown beside the bar.
    :raises Cancelled: the task should stop now.
    """
    for name, value in (("done", done), ("total", total)):
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value) or value < 0):
            raise ValueError(f"progress.update: {name} must be a finite number >= 0, got {value!r}")
    reporter = _reporter.get()
    if reporter is None:
        raise RuntimeError("progress.update() called outside a Taskbeam job")
    reporter(done, total, str(message)[:MAX_MESSAGE_LENGTH])


def current_task_id():
    """The id of the task being run (e.g. to name its output files)."""
    task_id = _task_id.get()
    if task_id is None:
        raise RuntimeError("progress.current_task_id() called outside a Taskbeam job")
    return task_id


@contextlib.contextmanager
def reporting_to(callback, task_id=None):
    """Route :func:`update` calls to ``callback(done, total, message)`` in this block.

    The worker uses it around every job; unit tests use it to capture progress.
    """
    token, id_token = _reporter.set(callback), _task_id.set(task_id)
    try:
        yield callback
    finally:
        _reporter.reset(token)
        _task_id.reset(id_token)
