"""Workflows: a task whose children run in parallel and roll up into its bar.

The children are stored with the parent when it is created (queued, each with its
first event), under the parent's ``kids`` set in the plan's order. Each child's
events roll up into the parent inside the append script (:data:`.scripts.APPEND`),
so a child event costs one script call however many children there are; the
parent's held-back roll-up events are written by :meth:`Workflows.flush_rollups`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, cast

from .. import protocol
from .base import StoreBase
from .tasks import Snapshot, Tasks, first_event, new_task_id

#: Workflows whose held-back roll-up event one flush writes at most.
FLUSH_BATCH = 100


class Workflows(StoreBase):
    """Creating a workflow's children, cancelling them, reading them."""

    def create_children(
        self,
        parent: Snapshot,
        children: Sequence[Any],
        *,
        span: float,
        allow_failures: bool,
        fan_in: bool,
        stage: str,
        now: float | None = None,
    ) -> list[str]:
        """Store ``children`` (:class:`taskbeam.workflows.PlannedChild`) of ``parent``
        (just created); their ids in order. ``span``: the children's share of the
        parent's bar in percent; ``stage``: its name.

        :raises LookupError: the parent is gone.
        """
        now = time.time() if now is None else now
        ids = [new_task_id() for _ in children]
        args: list[Any] = [
            parent["id"],
            f"{now:.6f}",
            self.unfinished_ttl_s,
            self.maxlen,
            self.keys.task(""),
            repr(float(sum(child.weight for child in children))),
            repr(float(span)),
            int(allow_failures),
            int(fan_in),
            stage,
        ]
        for task_id, child in zip(ids, children):
            args += [task_id, repr(child.weight), child.kind, json.dumps(child.params)]
            args.append(json.dumps(first_event(task_id, now)))
        keys = [
            self.keys.task(parent["id"]),
            self.keys.kids(parent["id"]),
            self.keys.active,
            self.keys.queued,
        ]
        if not int(self._call(self._create_children, keys, args)):
            raise LookupError(parent["id"])
        return ids

    def child_ids(self, task_id: str) -> list[str]:
        """The workflow's children in the plan's order."""
        return cast(list[str], self.redis.zrange(self.keys.kids(task_id), 0, -1))

    def children_page(self, task_id: str, offset: int, limit: int) -> tuple[int, list[Snapshot]]:
        """``(how many children, snapshots of children offset .. offset + limit - 1)``."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.kids(task_id))
        pipe.zrange(self.keys.kids(task_id), offset, offset + limit - 1)
        total, ids = pipe.execute()
        if not ids:
            return int(total), []
        pipe = self.redis.pipeline(transaction=False)
        for child in ids:
            pipe.hgetall(self.keys.task(child))
        return int(total), [Tasks.snapshot_of(rec) for rec in pipe.execute() if rec]

    def children_results(self, task_id: str) -> list[Any]:
        """The children's results in order (None for one that did not succeed)."""
        ids = self.child_ids(task_id)
        pipe = self.redis.pipeline(transaction=False)
        for child in ids:
            pipe.hmget(self.keys.task(child), "state", "result")
        results = []
        for state, result in pipe.execute():
            ok = state == protocol.SUCCEEDED and result
            results.append(json.loads(result) if ok else None)
        return results

    def cancel_children(self, task_id: str, publish: Any = None) -> int:
        """End the queued children as cancelled, ask the running ones to stop; how
        many were unfinished. ``publish``: as :meth:`flush_rollups`'s."""
        keys = [self.keys.task(task_id), self.keys.events(task_id), *self._shared_keys()]
        return int(self._call(self._cancel_children, keys, self._event_args(publish)))

    def flush_rollups(self, publish: Any = None) -> list[tuple[str, str]]:
        """Write the roll-up events held back for 100 ms or more; ``(parent id,
        event)`` of each. ``publish(task_id)``: the envelope to publish each with in
        the script (:meth:`taskbeam.emitter.StockEnvelope.around`), or None."""
        # No task of its own: the pending set stands in for it (a declared key must be
        # one the caller's Redis user may touch, so never an empty placeholder).
        keys = [self.keys.rollups, self.keys.rollups, *self._shared_keys()]
        args = [*self._event_args(publish), FLUSH_BATCH]
        written = self._call(self._flush_rollups, keys, args)
        return list(zip(written[::2], written[1::2]))

    def _shared_keys(self) -> list[str]:
        return [self.keys.leases, self.keys.active, self.keys.queued, self.keys.main_only]

    def _event_args(self, publish: Any) -> list[Any]:
        """The ARGV of :data:`.scripts.EVENTS` for events its scripts write of
        themselves (a roll-up, a child cancelled), published (in the script) with
        ``publish("")``'s envelope parts unless None."""
        parts = publish("") if publish is not None else ("",) * 6
        now = time.time()
        return [
            repr(float(f"{now:.6f}")),
            protocol.iso_utc(now),
            self.maxlen,
            self.retention_s,
            "",
            "",
            self.keys.owner(""),
            *parts,
            self.keys.task(""),
            self.keys.rollups,
        ]
