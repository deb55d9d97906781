"""Every Redis key and Pub/Sub channel name of Taskbeam, built in one place.

``ns`` is TASKBEAM_NAMESPACE; two deployments sharing one Redis use different ones.

- ``ns:task:<id>``             hash, the snapshot plus owner, params, attempts, cancel flag,
                               ``fence`` (the current run's token) and ``last_emit``
- ``ns:task:<id>:events``      stream, one entry per event, entry id ``<seq>-0``
- ``ns:task:<id>:kids``        a workflow's children: sorted set of ids by their order
- ``ns:task:<id>:counted``     a workflow's roll-up: hash, child id -> its progress counted
- ``ns:rollups``               sorted set of workflows with a roll-up event held back (scripts)
- ``ns:owner:<owner>``         sorted set of the owner's task ids by creation time
- ``ns:owner:<owner>:active``  set of the owner's tasks that have not finished
- ``ns:active``                sorted set of every unfinished task id by creation time
- ``ns:queued``                sorted set of the task ids not yet started, by creation time
                               (a task's queue position is its rank here)
- ``ns:leases``                sorted set of running task ids by lease expiry (Redis clock)
- ``ns:workers``               sorted set of worker host names by when each last consumed
- ``ns:socketio:main-only``    set (with a short TTL) while a web process reads only the
                               main message-queue channel (``mq_listener``)
- ``ns:sweeper``               lock: the one worker sweeping stranded tasks (housekeeping.py)
- ``ns:rate:<owner>:<minute>``, ``ns:rate-ip:<address>:<minute>``
                               counters of the task-creation rate limits (web/api.py)
- ``ns:celery:``               prefix of every key of the Celery broker (broker.py)
- ``ns:socketio``              the Socket.IO message-queue channel (Pub/Sub channels ignore
                               the DB number); ``ns:socketio#<room>`` one room's events
                               (``protocol.room_channel``)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The key names of the deployment whose namespace is ``ns``."""

    ns: str

    def task(self, task_id: str) -> str:
        return f"{self.ns}:task:{task_id}"

    def events(self, task_id: str) -> str:
        return f"{self.ns}:task:{task_id}:events"

    def kids(self, task_id: str) -> str:
        return f"{self.ns}:task:{task_id}:kids"

    @property
    def rollups(self) -> str:
        return f"{self.ns}:rollups"

    def owner(self, owner: str) -> str:
        return f"{self.ns}:owner:{owner}"

    def owner_active(self, owner: str) -> str:
        return f"{self.ns}:owner:{owner}:active"

    def address_active(self, address: str) -> str:
        """The unfinished tasks a client address created, by creation time (quotas)."""
        return f"{self.ns}:addr:{address}:active"

    @property
    def exports_usage(self) -> str:
        """A worker's measure of the exports volume (taskbeam.quotas)."""
        return f"{self.ns}:exports:usage"

    @property
    def exports_owners(self) -> str:
        return f"{self.ns}:exports:owners"

    @property
    def exports_addrs(self) -> str:
        return f"{self.ns}:exports:addrs"

    @property
    def exports_forgotten(self) -> str:
        """Files of removed export tasks, for a worker to delete."""
        return f"{self.ns}:exports:forgotten"

    @property
    def active(self) -> str:
        return f"{self.ns}:active"

    @property
    def queued(self) -> str:
        return f"{self.ns}:queued"

    @property
    def leases(self) -> str:
        return f"{self.ns}:leases"

    @property
    def workers(self) -> str:
        return f"{self.ns}:workers"

    @property
    def main_only(self) -> str:
        return f"{self.ns}:socketio:main-only"

    @property
    def sweeper(self) -> str:
        return f"{self.ns}:sweeper"

    def rate(self, owner: str, window: int) -> str:
        return f"{self.ns}:rate:{owner}:{window}"

    def rate_ip(self, address: str | None, window: int) -> str:
        return f"{self.ns}:rate-ip:{address}:{window}"

    @property
    def celery_prefix(self) -> str:
        return f"{self.ns}:celery:"

    @property
    def socketio_channel(self) -> str:
        return f"{self.ns}:socketio"
