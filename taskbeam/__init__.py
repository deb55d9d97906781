"""Taskbeam: long-running background jobs with live progress in the browser.

The public API, for a team's own jobs and code (docs/jobs.md); every other module
is internal and may change between versions:

- :func:`job`: register a function as a job kind, its params declared once as a
  pydantic model, maybe in weighted ``stages``;
- :func:`workflow`, :class:`Child`, :class:`Group`: a kind whose children run in
  parallel on any workers, with one bar for them all and an optional fan-in;
- :mod:`progress`: ``progress.update(done, total, message)`` and
  ``progress.stage(name)`` from inside a job;
- :class:`JobError`: end a job as ``failed`` with a code and a message of its own;
- :func:`submit`: start a task from your own code (a view, a CLI command, Celery beat);
- :class:`Taskbeam`: the Flask extension for an app of your own (``init_app``);
- the errors :func:`submit` raises: :class:`ParamError`, :class:`UnknownKind`,
  :class:`TooManyActive`, :class:`QueueUnavailable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import progress, registry  # noqa: F401  (registry.get: for tests of a kind)
from .progress import JobError
from .registry import ParamError, UnknownKind, job, workflow
from .tasks import QueueUnavailable
from .workflows import Child, Group

if TYPE_CHECKING:
    from .store import TooManyActive
    from .web.extension import Taskbeam

__all__ = [
    "Child",
    "Group",
    "JobError",
    "ParamError",
    "QueueUnavailable",
    "Taskbeam",
    "TooManyActive",
    "UnknownKind",
    "job",
    "progress",
    "submit",
    "workflow",
]


def submit(kind: str, params: Any = None, *, owner: str) -> dict:
    """Start a task of ``kind`` for ``owner``; its snapshot (as ``POST /api/tasks``'s 202).

    The same validation, MAX_ACTIVE_TASKS limit and stored snapshot as the API; every
    open page of the owner lists the task at once. The per-minute rate limits are the
    API's, for remote clients: they do not apply here.

    :param params: a dict of JSON values or an instance of the kind's params model.
    :param owner: the user as your login names them (the JWT ``sub`` in jwt mode, the
                  auth proxy's user in header mode, ``owner_of(request)`` with the
                  extension): the task appears in that user's pages.
    :raises UnknownKind: no such kind (the API's 400 ``invalid_params``).
    :raises ParamError: bad params; ``.field`` names the field (the API's 400).
    :raises TooManyActive: the owner has MAX_ACTIVE_TASKS unfinished (the API's 429).
    :raises QueueUnavailable: the broker refused; nothing was kept (the API's 503).
    """
    from . import submitting

    return submitting.submit(kind, params, owner=owner)


# Loaded when asked for: importing the package (as Gunicorn's worker class does, before
# it monkey-patches) must not import redis (and ssl) or Flask.
def __getattr__(name: str) -> Any:
    if name == "Taskbeam":
        from .web.extension import Taskbeam

        return Taskbeam
    if name == "TooManyActive":
        from .store import TooManyActive

        return TooManyActive
    raise AttributeError(f"module 'taskbeam' has no attribute {name!r}")
