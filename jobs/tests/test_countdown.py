"""The example job, run as the worker runs it, without a worker."""

import pytest

import taskbeam
from jobs.countdown import countdown


def test_counts_down_reporting_each_number():
    calls = []
    params = taskbeam.registry.get("countdown").load({"start": 3, "pause_s": 0, "shout": True})
    with taskbeam.progress.reporting_to(lambda *call: calls.append(call)):
        result = countdown(params)
    assert result == {"counted": 3, "said": "LIFTOFF"}
    assert [(done, total) for done, total, _ in calls] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    "params, field",
    [({"start": 0}, "start"), ({"pause_s": "1"}, "pause_s"), ({"word": ""}, "word")],
)
def test_bad_params_name_the_field(params, field):
    with pytest.raises(taskbeam.ParamError) as caught:
        taskbeam.registry.get("countdown").load(params)
    assert caught.value.field == field
