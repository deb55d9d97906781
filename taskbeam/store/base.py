"""What both halves of the store share: the client, the settings it reads, the
registered scripts, the key names and the (replica-waiting) script call; and the
store's exceptions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.commands.core import Script

import redis as redis_lib

from . import scripts
from .keys import Keys

if TYPE_CHECKING:
    from ..config import Settings


class TaskGone(LookupError):
    """The task does not exist (never created, or expired)."""


class TaskFinished(RuntimeError):
    """The task already reached a terminal state; nothing more is written."""

    def __init__(self, state: str) -> None:
        super().__init__(f"task already {state}")
        self.state = state


class LeaseLost(BaseException):
    """This run's lease passed to another run: it must stop and write nothing more.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a job's own
    ``except Exception`` cannot swallow it and carry on writing.
    """


class TooManyActive(RuntimeError):
    """The owner already has ``MAX_ACTIVE_TASKS`` queued or running tasks."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} active tasks")
        self.limit = limit


class TooManyActiveAtAddress(TooManyActive):
    """The client address already has ``MAX_ACTIVE_TASKS_PER_IP`` of them."""


class NotReplicated(redis_lib.TimeoutError):
    """A write reached the primary but not ``REDIS_WAIT_REPLICAS`` replicas in time.

    Transient (a ``TimeoutError``): the emitter retries, and the retry's WAIT
    covers the first try (see ``scripts.APPEND``), or, after a failover that lost it,
    writes it again on the new primary with the same seq.
    """


class StoreBase:
    """Reads and writes tasks. Shared by the web app and the worker.

    :param redis: a ``redis.Redis`` client (``decode_responses=True``).
    :param settings: :class:`taskbeam.config.Settings`.
    """

    def __init__(self, redis: redis_lib.Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.maxlen = settings.event_log_maxlen
        self.retention_s = settings.task_retention_s
        # A task that never runs still goes away; one that runs gets its time limit.
        self.unfinished_ttl_s = settings.task_retention_s + settings.task_time_limit_s
        # Sentinel mode: writes a client may see wait for this many replicas.
        self.wait_replicas = settings.redis_wait_replicas
        self.wait_timeout_ms = settings.redis_wait_timeout_ms
        self._create = redis.register_script(scripts.CREATE)
        self._append = redis.register_script(scripts.APPEND)
        self._claim_run = redis.register_script(scripts.CLAIM_RUN)
        self._renew_lease = redis.register_script(scripts.RENEW_LEASE)
        self._release_lease = redis.register_script(scripts.RELEASE_LEASE)
        self._reap = redis.register_script(scripts.REAP)
        self._remove_finished = redis.register_script(scripts.REMOVE_FINISHED)
        self._publish = redis.register_script(scripts.PUBLISH)
        self._create_children = redis.register_script(scripts.CREATE_CHILDREN)
        self._cancel_children = redis.register_script(scripts.CANCEL_CHILDREN)
        self._flush_rollups = redis.register_script(scripts.FLUSH_ROLLUPS)

    def _call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script; in Sentinel mode (``wait_replicas``) return only once
        its writes are on that many replicas, else raise :class:`NotReplicated`.

        Without replicas to wait for this is the script call alone: the hot
        path of a single Redis is unchanged.
        """
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        try:
            reply, acks = self._script_then_wait(script, keys, args)
        except redis_lib.exceptions.NoScriptError:
            # A new primary (scripts are not replicated) or a restarted one.
            self.redis.script_load(script.script)
            reply, acks = self._script_then_wait(script, keys, args)
        if int(acks) < self.wait_replicas:
            raise NotReplicated(
                f"on {acks} of {self.wait_replicas} replicas after {self.wait_timeout_ms} ms"
            )
        return reply

    def _script_then_wait(self, script: Script, keys: list[str], args: list[Any]) -> list[Any]:
        # One connection for both: WAIT counts the writes of its own connection.
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        return pipe.execute()
