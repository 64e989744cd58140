"""kdnb.core.timing: the best time of a call is the minimum over repeats, after untimed warm-up calls."""

import time

import pytest

from kdnb.core.timing import time_call


def test_time_call_runs_warmup_and_repeats_and_reports_the_fastest():
    calls, pauses = [], iter([0.05, 0.0, 0.03, 0.01])

    def work():
        calls.append(1)
        time.sleep(next(pauses))

    best = time_call(work, repeats=3, warmup=1)
    assert len(calls) == 4  # one warm-up (the 0.05 s call is not timed) and three timed calls
    assert 0.0 <= best < 0.01  # the minimum over the timed calls is the 0 s one


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(repeats=0), ValueError, "repeats must be >= 1"),
    (dict(warmup=-1), ValueError, "warmup must be >= 0"),
    (dict(repeats=1.5), TypeError, "repeats must be an int"),
])
def test_time_call_rejects_bad_counts(kwargs, error, message):
    with pytest.raises(error, match=message):
        time_call(lambda: None, **kwargs)
