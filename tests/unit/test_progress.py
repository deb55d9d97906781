"""Unit tests for progress.update and progress.reporting_to."""

import pytest

from taskbeam import progress


def test_update_outside_a_job_raises():
    with pytest.raises(RuntimeError, match="outside a Taskbeam job"):
        progress.update(1, 2)


def test_update_routes_to_callback():
    calls = []
    with progress.reporting_to(lambda *args: calls.append(args)) as callback:
        progress.update(1, 4, "first")
        progress.update(2.5, 4)
    assert calls == [(1, 4, "first"), (2.5, 4, "")]
    assert callable(callback)


# NaN and infinity are floats but not numbers of units: they would reach the task
# record as progress "nan", which no JSON parser accepts.
@pytest.mark.parametrize(
    "done, total",
    [
        (-1, 10),
        (1, -10),
        (True, 10),
        (1, False),
        ("1", 10),
        (1, None),
        (float("nan"), 10),
        (1, float("nan")),
        (float("inf"), 10),
    ],
)
def test_update_rejects_bad_numbers(done, total):
    calls = []
    with progress.reporting_to(lambda *args: calls.append(args)):
        with pytest.raises(ValueError):
            progress.update(done, total)
    assert calls == []


def test_message_truncated():
    calls = []
    with progress.reporting_to(lambda *args: calls.append(args)):
        progress.update(1, 2, "x" * (progress.MAX_MESSAGE_LENGTH + 50))
    assert len(calls[0][2]) == progress.MAX_MESSAGE_LENGTH


def test_message_converted_to_str():
    calls = []
    with progress.reporting_to(lambda *args: calls.append(args)):
        progress.update(1, 2, 42)
    assert calls == [(1, 2, "42")]


def test_context_restored_after_block():
    outer, inner = [], []
    with progress.reporting_to(lambda *args: outer.append(args)):
        with progress.reporting_to(lambda *args: inner.append(args)):
            progress.update(1, 2)
        progress.update(2, 2)
    assert inner == [(1, 2, "")] and outer == [(2, 2, "")]
    with pytest.raises(RuntimeError):
        progress.update(1, 2)


def test_context_restored_after_exception():
    with pytest.raises(progress.Cancelled):
        with progress.reporting_to(lambda *args: None):
            raise progress.Cancelled()
    with pytest.raises(RuntimeError):
        progress.update(1, 2)
