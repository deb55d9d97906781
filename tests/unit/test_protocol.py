"""Unit tests for the pure helpers in taskbeam.protocol."""

import pytest

from taskbeam import protocol


@pytest.mark.parametrize(
    "done, total, expected",
    [
        (0, 10, 0.0),
        (5, 10, 50.0),
        (10, 10, 100.0),
        (15, 10, 100.0),  # clamped above
        (-3, 10, 0.0),  # clamped below
        (1, 3, 33.3),  # rounded to 0.1
        (2, 3, 66.7),
        (0, 0, 100.0),  # nothing to do means done
        (3, -1, 100.0),
    ],
)
def test_percent(done, total, expected):
    assert protocol.percent(done, total) == expected


def test_iso_utc_epoch():
    assert protocol.iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_iso_utc_known_timestamp_with_milliseconds():
    assert protocol.iso_utc(1_700_000_000.123) == "2023-11-14T22:13:20.123Z"


def test_iso_utc_truncates_to_milliseconds():
    stamp = protocol.iso_utc(1.9999)
    assert stamp == "1970-01-01T00:00:01.999Z"
    assert stamp.endswith("Z") and len(stamp) == len("1970-01-01T00:00:00.000Z")


def test_task_room():
    assert protocol.task_room("abc123") == "task:abc123"


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def coalescer(clock):
    return protocol.Coalescer(0.5, clock)


def test_coalescer_first_report_passes(coalescer):
    assert coalescer.admit(protocol.RUNNING, 1.0)


def test_coalescer_drops_same_state_inside_window(coalescer, clock):
    assert coalescer.admit(protocol.RUNNING, 1.0)
    clock.now += 0.25
    assert not coalescer.admit(protocol.RUNNING, 2.0)


def test_coalescer_admits_after_window(coalescer, clock):
    assert coalescer.admit(protocol.RUNNING, 1.0)
    clock.now += 0.25
    assert not coalescer.admit(protocol.RUNNING, 2.0)
    clock.now += 0.25  # a full window since the last admitted report
    assert coalescer.admit(protocol.RUNNING, 3.0)


def test_coalescer_state_change_always_passes(coalescer):
    assert coalescer.admit(protocol.RUNNING, 1.0)
    assert coalescer.admit(protocol.RETRYING, 0.0)
    assert coalescer.admit(protocol.RUNNING, 0.0)


def test_coalescer_complete_progress_always_passes(coalescer):
    assert coalescer.admit(protocol.RUNNING, 99.0)
    assert coalescer.admit(protocol.RUNNING, 100.0)


def test_coalescer_note_resets_window(coalescer, clock):
    clock.now += 10
    coalescer.note(protocol.RUNNING)
    clock.now += 0.25
    assert not coalescer.admit(protocol.RUNNING, 1.0)
    clock.now += 0.25
    assert coalescer.admit(protocol.RUNNING, 2.0)
