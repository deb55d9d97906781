"""Durable task state in Redis: a snapshot hash and an append-only event log per task.

- :mod:`.keys`: every Redis key and channel name (and what each holds);
- :mod:`.scripts`: the Lua scripts, each one atomic step;
- :mod:`.tasks`: tasks and their event log (create, append, read, remove);
- :mod:`.runs`: runs and their leases (claim, renew, release, reap, the sweep's query);
- :mod:`.client`: the Redis client both sides make.

:class:`TaskStore` is both halves over one client; callers import from here.
"""

from .base import (
    LeaseLost,
    NotReplicated,
    TaskFinished,
    TaskGone,
    TooManyActive,
    TooManyActiveAtAddress,
)
from .client import DEAD_PEER_OPTIONS, redis_client, redis_tls
from .keys import Keys
from .runs import WORKER_ALIVE_WINDOW_S, Runs
from .tasks import Appended, Tasks, new_task_id
from .workflows import Workflows

__all__ = [
    "Appended",
    "DEAD_PEER_OPTIONS",
    "WORKER_ALIVE_WINDOW_S",
    "Keys",
    "LeaseLost",
    "NotReplicated",
    "TaskFinished",
    "TaskGone",
    "TaskStore",
    "TooManyActive",
    "TooManyActiveAtAddress",
    "new_task_id",
    "redis_client",
    "redis_tls",
]


class TaskStore(Tasks, Workflows, Runs):
    """Reads and writes tasks. Shared by the web app and the worker.

    :param redis: a ``redis.Redis`` client (``decode_responses=True``).
    :param settings: :class:`taskbeam.config.Settings`.
    """
