"""Runs and their leases: claim, renew, release, reap; the sweep's query; workers.

Runs are fenced: claiming a run increments the task's ``fence`` and returns it as
the run's token. Appends, renewals and releases that carry a token are refused
unless it is the current one and the run's lease is still in the leases set, so a
run that was frozen past its lease (and handed over) writes nothing after it
thaws. Leases use Redis's clock, so workers on hosts with skewed clocks agree.
"""

from __future__ import annotations

import time
from typing import Any, cast

from .. import protocol
from .base import StoreBase, TaskFinished, TaskGone

# A worker counts as alive if it reported within this many seconds (it reports every
# 2 s while its consumer runs; see housekeeping.py).
WORKER_ALIVE_WINDOW_S = 15.0


class Runs(StoreBase):
    """A run's lease on its task, and the worker-side bookkeeping around it."""

    def claim_run(self, task_id: str, lease_s: float) -> int | None:
        """Take the run lease of a task and return the new run's token.

        :returns: the token (an int > 0), or None if a live run holds the lease.
        :raises TaskGone: the task does not exist.
        :raises TaskFinished: the task already ended.
        """
        # Replicated before the run writes: a failover must not take its lease away.
        code = int(
            self._call(
                self._claim_run, [self.keys.leases, self.keys.task(task_id)], [task_id, lease_s]
            )
        )
        if code == -1:
            raise TaskGone(task_id)
        if code == -2:
            raise TaskFinished("finished")
        return code or None

    def renew_lease(self, task_id: str, token: int, lease_s: float) -> bool:
        """Extend the run's lease; False once the run has lost it (it must stop)."""
        return bool(
            self._renew_lease(
                keys=[self.keys.leases, self.keys.task(task_id)], args=[task_id, token, lease_s]
            )
        )

    def release_lease(self, task_id: str, token: int) -> None:
        """Give up the lease, if the run ``token`` still holds it."""
        self._release_lease(keys=[self.keys.leases, self.keys.task(task_id)], args=[task_id, token])

    def reap_expired_leases(self, limit: int = 100) -> list[str]:
        """Ids of runs whose worker stopped renewing; each is returned to one caller only."""
        return cast(list[str], self._reap(keys=[self.keys.leases], args=[limit]))

    def restore_lease(self, task_id: str) -> None:
        """Put back an expired lease that could not be handed over, so the next
        reaping round tries again (unless a run claimed the task meanwhile)."""
        self.redis.zadd(self.keys.leases, {task_id: 0}, nx=True)

    def unfinished_without_run(
        self, older_than_s: float, limit: int = 500, now: float | None = None
    ) -> list[dict[str, str]]:
        """Unfinished tasks created over ``older_than_s`` ago that hold no lease.

        Forgets ids whose task expired or finished. Returns raw hashes.
        """
        now = time.time() if now is None else now
        ids = cast(
            list[str],
            self.redis.zrangebyscore(
                self.keys.active, "-inf", now - older_than_s, start=0, num=limit
            ),
        )
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(self.keys.task(task_id))
            pipe.zscore(self.keys.leases, task_id)
        replies = pipe.execute()
        found: list[dict[str, str]] = []
        done: list[str] = []
        for task_id, rec, lease in zip(ids, replies[::2], replies[1::2]):
            if not rec or rec["state"] in protocol.TERMINAL_STATES:
                done.append(task_id)
            elif lease is None:
                found.append(rec)
        if done:
            self.redis.zrem(self.keys.active, *done)
        return found

    def worker_alive(self, name: str, now: float | None = None) -> None:
        """Record that worker ``name`` is consuming; names silent for a day are dropped."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {name: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - 86_400)
        pipe.execute()

    def operator_gauges(self, now: float | None = None) -> dict[str, Any]:
        """What an autoscaler or an operator watches, for the whole deployment:
        tasks not yet started and the age of the oldest, runs holding a lease,
        and workers that reported within :data:`WORKER_ALIVE_WINDOW_S`."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.queued)
        pipe.zrange(self.keys.queued, 0, 0, withscores=True)
        pipe.zcard(self.keys.leases)
        pipe.zcount(self.keys.workers, now - WORKER_ALIVE_WINDOW_S, "+inf")
        queued, oldest, running, workers = pipe.execute()
        return {
            "tasks_queued": queued,
            "oldest_queued_age_seconds": round(max(now - oldest[0][1], 0.0), 3) if oldest else 0,
            "tasks_running": running,
            "workers_alive": workers,
        }
