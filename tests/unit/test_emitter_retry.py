"""Unit tests for emitter.retrying, the bounded backoff around Redis calls."""

import pytest
from redis.exceptions import ConnectionError

from taskbeam.emitter import retrying


class FakeTime:
    """A clock that advances only when ``sleep`` is called."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times, exc=ConnectionError, result="ok"):
    calls = []

    def action():
        calls.append(1)
        if len(calls) <= times:
            raise exc("redis down")
        return result

    action.calls = calls
    return action


def test_returns_on_first_success():
    fake = FakeTime()
    assert retrying(lambda: 42, deadline_s=1, sleep=fake.sleep, clock=fake.clock) == 42
    assert fake.sleeps == []


def test_retries_with_growing_capped_delays():
    fake, action = FakeTime(), failing(6)
    result = retrying(
        action,
        deadline_s=60,
        first_delay_s=0.5,
        max_delay_s=2.0,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    assert result == "ok"
    assert len(action.calls) == 7
    assert fake.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_reraises_after_deadline():
    fake, action = FakeTime(), failing(1000)
    with pytest.raises(ConnectionError):
        retrying(
            action,
            deadline_s=5,
            first_delay_s=1.0,
            max_delay_s=2.0,
            sleep=fake.sleep,
            clock=fake.clock,
        )
    assert fake.sleeps == [1.0, 2.0, 2.0]  # a fourth wait would pass the deadline
    assert fake.now <= 5


def test_does_not_retry_other_errors():
    fake, action = FakeTime(), failing(1, exc=ValueError)
    with pytest.raises(ValueError):
        retrying(action, deadline_s=60, sleep=fake.sleep, clock=fake.clock)
    assert len(action.calls) == 1
    assert fake.sleeps == []
