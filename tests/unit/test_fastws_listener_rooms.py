"""The fast listener's sweep of idle room channels (listener.FastRedisManager), on
python-socketio's real manager: it looks only at rooms emptied since the last sweep,
so a web holding 10,000 rooms does not stop every 2 s to scan them all."""

import threading

import socketio

from taskbeam.web.fastws import listener
from taskbeam.web.metrics import Metrics


class CountingEvent(threading.Event):
    checks = 0

    def is_set(self):
        CountingEvent.checks += 1
        return super().is_set()


def manager_holding(rooms):
    """A manager (no Redis: nothing is sent) whose sockets hold ``rooms``, each
    room's channel confirmed."""
    manager = listener.FastRedisManager("redis://127.0.0.1:9", "sio", Metrics())
    socketio.Server(async_mode="threading", client_manager=manager)  # its listener not started
    sids = {}
    for n, room in enumerate(rooms):
        sids[room] = manager.connect(f"e{n}", "/")
        manager.enter_room(sids[room], "/", room, f"e{n}")
        manager.watch_room(room, timeout_s=0)
    for watched in manager.room_channels.values():
        watched.ready = CountingEvent()
        watched.ready.set()
    CountingEvent.checks = 0
    return manager, sids


def test_the_sweep_looks_only_at_rooms_left_since_the_last_one():
    rooms = [f"task:{n}" for n in range(1000)]
    manager, sids = manager_holding(rooms)
    assert manager.forget_idle_rooms() == 0
    manager.leave_room(sids["task:7"], "/", "task:7")
    manager.disconnect(sids["task:8"], "/", ignore_queue=True)
    assert manager.forget_idle_rooms() == 2
    assert set(manager.room_channels) == {f"sio#{room}" for room in rooms} - {
        "sio#task:7",
        "sio#task:8",
    }
    assert CountingEvent.checks <= 4  # not one per room held


def test_a_room_left_and_joined_again_before_the_sweep_keeps_its_channel():
    manager, sids = manager_holding(["task:a", "task:b"])
    manager.leave_room(sids["task:a"], "/", "task:a")
    manager.enter_room(sids["task:b"], "/", "task:a", "e1")
    assert manager.forget_idle_rooms() == 0
    assert "sio#task:a" in manager.room_channels


def test_a_room_emptied_before_its_channel_is_confirmed_goes_at_a_later_sweep():
    manager, sids = manager_holding(["task:a"])
    manager.room_channels["sio#task:a"].ready.clear()  # its SUBSCRIBE not answered yet
    manager.leave_room(sids["task:a"], "/", "task:a")
    assert manager.forget_idle_rooms() == 0
    manager.room_channels["sio#task:a"].ready.set()
    assert manager.forget_idle_rooms() == 1
    assert manager.room_channels == {}
