"""Tasks and their event log: a snapshot hash and an append-only stream per task.

A new task's keys expire after ``TASK_RETENTION_S`` plus the task time limit even
if it never runs; the terminal event sets them to expire ``TASK_RETENTION_S``
later. Every event is written here *before* it is published, so a subscriber that
missed the live message reads it back from the stream.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from typing import Any, NamedTuple, cast

from .. import protocol
from .base import (
    LeaseLost,
    NotReplicated,
    StoreBase,
    TaskFinished,
    TaskGone,
    TooManyActive,
    TooManyActiveAtAddress,
)

# A task's raw hash as Redis returns it, and the contract's snapshot made from it.
Record = dict[str, str]
Snapshot = dict[str, Any]


class Appended(NamedTuple):
    """What :meth:`Tasks.append` wrote. For a workflow's child also: its parent's id,
    the parent's event it wrote ('' if held back) and, when the parent's fan-in is
    due, the parent's id again (the caller sends it to the workers)."""

    event: str
    cancel: bool
    parent: str = ""
    parent_event: str = ""
    fan_in_due: str = ""


# events_page's answer: the events' JSON texts, the last seq returned, and whether more follow.
Page = tuple[list[str], int, bool]


def new_task_id() -> str:
    return secrets.token_urlsafe(12)


def first_event(task_id: str, now: float) -> dict[str, Any]:
    """A new task's event seq 1, ``queued``, stored with it."""
    return {
        "task_id": task_id,
        "seq": 1,
        "state": protocol.QUEUED,
        "progress": 0.0,
        "message": "Queued",
        "ts": round(now, 6),
    }


def _count_text(count: float) -> str:
    # A JSON number, spliced into the event as it is: 20000, not 20000.0.
    return str(int(count)) if float(count).is_integer() else repr(float(count))


def _progress_text(progress: float) -> str:
    # Stored as the JSON number the events carry.
    return repr(float(progress))


def _page_of(entries: list[Any], after: int, limit: int) -> Page:
    """``(events, next_after, has_more)`` from XRANGE's ``limit + 1`` entries."""
    page = entries[:limit]
    next_after = int(page[-1][0].split("-")[0]) if page else after
    return [fields["e"] for _, fields in page], next_after, len(entries) > limit


class Tasks(StoreBase):
    """Creating, reading, changing and removing tasks; the event log."""

    def _keys_of(self, task_id: str, owner: str) -> list[str]:
        """The keys a task's creation and removal touch (the Lua scripts' KEYS)."""
        return [
            self.keys.task(task_id),
            self.keys.events(task_id),
            self.keys.owner(owner),
            self.keys.owner_active(owner),
            self.keys.active,
            self.keys.queued,
        ]

    def create(
        self,
        *,
        kind: str,
        owner: str,
        params: dict[str, Any],
        max_active: int = 0,
        now: float | None = None,
        retention_s: int | None = None,
        address: str | None = None,
        max_active_per_address: int = 0,
    ) -> Snapshot:
        """Store a new task with its first event (seq 1, ``queued``); return its snapshot.

        :param max_active: refuse (:class:`TooManyActive`) when the owner already has
                           this many unfinished tasks; 0 for no limit.
        :param retention_s: how long the task stays after it ends, if not
                            TASK_RETENTION_S (anonymous owners, taskbeam.quotas).
        :param address: the creating client's address key, kept for the per-address
                        export quota (taskbeam.quotas).
        :param max_active_per_address: refuse (:class:`TooManyActiveAtAddress`) when
                                       ``address`` already has this many; 0: no limit.
        """
        now = time.time() if now is None else now
        task_id = new_task_id()
        stamp = protocol.iso_utc(now)
        fields = {
            "id": task_id,
            "kind": kind,
            "owner": owner,
            "params": json.dumps(params),
            "state": protocol.QUEUED,
            "progress": _progress_text(0),
            "message": "Queued",
            "seq": 1,
            "created_at": stamp,
            "updated_at": stamp,
            "attempts": 0,
            "cancel": 0,
            "fence": 0,
        }
        if address is not None:
            fields["addr"] = address
        retention = self.retention_s
        if retention_s is not None and retention_s < self.retention_s:
            retention = fields["retention"] = retention_s
        event = first_event(task_id, now)
        args = [
            task_id,
            f"{now:.6f}",
            max_active,
            self.unfinished_ttl_s - self.retention_s + retention,
            retention * 2,
            self.maxlen,
            json.dumps(event),
            self.keys.task(""),
            max_active_per_address if address is not None else 0,
        ]
        for item in fields.items():
            args += item
        keys = [*self._keys_of(task_id, owner), self.keys.address_active(address or "")]
        try:
            created = int(self._call(self._create, keys, args))
        except NotReplicated:
            # The caller answers 503: no task may stay behind for the sweeper to run.
            # If the primary is gone instead, so is the task.
            self.delete(task_id, owner)
            raise
        if created == -1:
            raise TooManyActiveAtAddress(max_active_per_address)
        if not created:
            raise TooManyActive(max_active)
        return self.snapshot_of({k: str(v) for k, v in fields.items()})

    def delete(self, task_id: str, owner: str) -> None:
        """Remove a task that could not be enqueued, so no half-created task remains
        (a workflow's children too)."""
        kids = cast(list[str], self.redis.zrange(self.keys.kids(task_id), 0, -1))
        pipe = self.redis.pipeline(transaction=True)
        for kid in kids:
            pipe.delete(self.keys.task(kid), self.keys.events(kid))
            pipe.zrem(self.keys.active, kid)
            pipe.zrem(self.keys.queued, kid)
        pipe.delete(self.keys.kids(task_id))
        pipe.delete(self.keys.task(task_id), self.keys.events(task_id))
        pipe.zrem(self.keys.leases, task_id)
        pipe.zrem(self.keys.owner(owner), task_id)
        pipe.srem(self.keys.owner_active(owner), task_id)
        pipe.zrem(self.keys.active, task_id)
        pipe.zrem(self.keys.queued, task_id)
        pipe.execute()

    def remove_finished(self, task_id: str, owner: str) -> bool:
        """Remove a terminal task of ``owner`` with its events, atomically.

        :returns: True if removed; False if the task is not finished yet.
        :raises TaskGone: no such task, or not ``owner``'s.
        """
        keys = [*self._keys_of(task_id, owner), self.keys.leases]
        code = int(self._remove_finished(keys=keys, args=[task_id, owner, self.keys.task("")]))
        if code == -1:
            raise TaskGone(task_id)
        return code == 1

    def add_queue_positions(
        self, snapshots: list[Snapshot], now: float | None = None
    ) -> list[Snapshot]:
        """Set ``queue_position`` (1 = next to start) on the queued ones among
        ``snapshots``: one ZRANK each, O(log n). Entries of tasks that expired
        before they started are dropped first, so they do not count."""
        queued = [s for s in snapshots if s["state"] == protocol.QUEUED]
        if not queued:
            return snapshots
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.queued, "-inf", now - self.unfinished_ttl_s)
        for snap in queued:
            pipe.zrank(self.keys.queued, snap["id"])
        for snap, rank in zip(queued, pipe.execute()[1:]):
            if rank is not None:
                snap["queue_position"] = rank + 1
        return snapshots

    def append(
        self,
        task_id: str,
        ts: float | None = None,
        *,
        token: int | None = None,
        emit_id: str | None = None,
        publish: tuple[str, ...] | None = None,
        **patch: Any,
    ) -> Appended:
        """Apply ``patch`` (state, progress, message, result, error, worker...) and log
        the event atomically.

        :param token: the writing run's token (:meth:`claim_run`); None for writers
                      outside a run (a cancel while queued, the sweeper).
        :param emit_id: names this write, so that a retry after a lost reply does not
                        write it twice.
        :param publish: ``(channel, room_channel, head, tail, before_room, after_room)``:
                        also PUBLISH ``head + event + tail`` in the same step (the
                        external emitter's message, :class:`taskbeam.emitter.StockEnvelope`),
                        to ``room_channel`` unless a web reads ``channel`` only (see
                        :meth:`publish`); a workflow's event, to its own room. None
                        publishes nothing.
        :returns: :class:`Appended`.
        :raises TaskGone: the task does not exist.
        :raises TaskFinished: the task is already terminal; nothing was written.
        :raises LeaseLost: ``token`` is not the current run's; nothing was written.
        """
        keys, args = self.append_call(
            task_id, ts, token=token, emit_id=emit_id, publish=publish, **patch
        )
        reply = self._call(self._append, keys, args)
        code = int(reply[0])
        if code == -1:
            raise TaskGone(task_id)
        if code == 0:
            raise TaskFinished(reply[1])
        if code == -2:
            raise LeaseLost(task_id)
        return Appended(reply[1], reply[2] == "1", *reply[3:6])

    def append_call(
        self,
        task_id: str,
        ts: float | None = None,
        *,
        token: int | None = None,
        emit_id: str | None = None,
        publish: tuple[str, ...] | None = None,
        **patch: Any,
    ) -> tuple[list[str], list[Any]]:
        """The append script's KEYS and ARGV for :meth:`append`'s arguments (also what
        bench/emit_driver.py pipelines)."""
        ts = time.time() if ts is None else ts
        args = [
            # To the microsecond, as json.dumps writes that float (the published text).
            repr(float(f"{ts:.6f}")),
            protocol.iso_utc(ts),
            self.maxlen,
            self.retention_s,
            emit_id or "",
            "" if token is None else str(token),
            self.keys.owner(""),
            *(tuple(publish or ()) + ("",) * 6)[:6],
            self.keys.task(""),
            self.keys.rollups,
        ]
        for field, value in patch.items():
            if field == "progress":
                value = _progress_text(value)
            elif field in ("done", "total"):
                if not math.isfinite(value):
                    continue
                value = _count_text(value)
            elif field in ("result", "error"):
                value = json.dumps(value)
            args += [field, value]
        keys = [
            self.keys.task(task_id),
            self.keys.events(task_id),
            self.keys.leases,
            self.keys.active,
            self.keys.queued,
            self.keys.main_only,
        ]
        return keys, args

    def publish(self, channel: str, room_channel: str, message: str) -> int:
        """PUBLISH ``message`` to ``room_channel``, read only by the web processes that
        hold the room, or to the main ``channel`` while some web reads nothing else
        (``keys.main_only`` exists: the stock listener, which cannot subscribe to more)."""
        return int(self._publish(keys=[self.keys.main_only], args=[channel, room_channel, message]))

    def record(self, task_id: str) -> Record | None:
        """The raw hash of a task, or None."""
        return cast(Record, self.redis.hgetall(self.keys.task(task_id))) or None

    def owned_record(self, task_id: str, owner: str | None) -> Record | None:
        """The raw hash if it exists and belongs to ``owner``; else None (no hint which)."""
        rec = self.record(task_id) if task_id else None
        if rec is None or not owner or not secrets.compare_digest(rec.get("owner", ""), owner):
            return None
        return rec

    def list_for_owner(self, owner: str, limit: int = 200) -> list[Snapshot]:
        """The owner's snapshots, newest first; forgets ids whose task has expired."""
        ids = cast(list[str], self.redis.zrevrange(self.keys.owner(owner), 0, limit - 1))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(self.keys.task(task_id))
        snapshots: list[Snapshot] = []
        gone: list[str] = []
        for task_id, rec in zip(ids, pipe.execute()):
            if rec:
                snapshots.append(self.snapshot_of(rec))
            else:
                gone.append(task_id)
        if gone:
            self.redis.zrem(self.keys.owner(owner), *gone)
        return snapshots

    def events_after(self, task_id: str, after: int) -> list[dict[str, Any]]:
        """Every stored event with ``seq > after``, ascending."""
        entries = cast(
            list[Any], self.redis.xrange(self.keys.events(task_id), min=f"{after + 1}-0", max="+")
        )
        return [json.loads(fields["e"]) for _, fields in entries]

    def events_page(self, task_id: str, after: int, limit: int) -> Page:
        """Up to ``limit`` stored events with ``seq > after`` as their stored JSON text
        (not parsed: readers splice it). Returns ``(events, next_after, has_more)``;
        ``next_after`` is the last returned seq (``after`` if none)."""
        entries = self.redis.xrange(
            self.keys.events(task_id), min=f"{after + 1}-0", max="+", count=limit + 1
        )
        return _page_of(cast(list[Any], entries), after, limit)

    def record_and_events_page(
        self, task_id: str, after: int, limit: int
    ) -> tuple[Record | None, list[str], int, bool]:
        """:meth:`record` and :meth:`events_page` in one round trip (a subscribe's reads)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.task(task_id))
        pipe.xrange(self.keys.events(task_id), min=f"{after + 1}-0", max="+", count=limit + 1)
        rec, entries = pipe.execute()
        return rec or None, *_page_of(entries, after, limit)

    def request_cancel(self, task_id: str) -> None:
        self.redis.hset(self.keys.task(task_id), "cancel", 1)

    def count_attempt(self, task_id: str, counter: str = "attempts") -> int:
        """Count one more start of the task (or of a workflow's fan-in:
        ``counter="fanin_attempts"``); returns how many starts there were."""
        return int(self.redis.hincrby(self.keys.task(task_id), counter, 1))

    @staticmethod
    def new_emit_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def snapshot_of(rec: Record) -> Snapshot:
        """The contract's snapshot from a stored hash; absent fields are omitted."""
        snap = {
            "id": rec["id"],
            "kind": rec["kind"],
            "state": rec["state"],
            "progress": float(rec["progress"]),
            "message": rec["message"],
            "seq": int(rec["seq"]),
            "created_at": rec["created_at"],
            "updated_at": rec["updated_at"],
        }
        if rec["state"] == protocol.SUCCEEDED and rec.get("result"):
            snap["result"] = json.loads(rec["result"])
        if rec["state"] == protocol.FAILED and rec.get("error"):
            snap["error"] = json.loads(rec["error"])
        if rec.get("worker"):
            snap["worker"] = rec["worker"]
        for field in ("started_at", "finished_at"):
            if rec.get(field):
                snap[field] = rec[field]
        if rec.get("params"):
            snap["params"] = json.loads(rec["params"])
        if rec["state"] == protocol.RUNNING and rec.get("stage"):
            snap["stage"] = rec["stage"]
        if rec.get("kids_total"):
            snap["children"] = {
                "total": int(rec["kids_total"]),
                "done": int(rec.get("kids_done", 0)),
                "failed": int(rec.get("kids_failed", 0)),
            }
        if rec.get("parent"):
            snap["parent"] = rec["parent"]
        return snap
