import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.stats import ci95, mean_ci, mean_ci95


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000).map(lambda n: n / 10_000), min_size=2, max_size=12))
def test_half_width_is_the_student_t_interval(values):
    from scipy import stats

    mean, std, half = mean_ci(values)
    assert mean == pytest.approx(sum(values) / len(values))
    if len(set(values)) > 1:
        low, high = stats.t.interval(0.95, len(values) - 1, loc=0, scale=stats.sem(values))
        assert half == pytest.approx((high - low) / 2, rel=1e-9)
        assert std == pytest.approx(stats.tstd(values), rel=1e-9)
    else:
        assert half == 0.0 and std == 0.0
    assert ci95(values) == half and mean_ci95(values) == (mean, half)


def test_small_and_non_finite_inputs():
    assert math.isnan(ci95([0.5]))
    assert mean_ci([5.0])[0] == 5.0
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([1.0, float("nan"), 3.0])[0] == 2.0
    assert mean_ci([1.0, 2.0, 3.0], confidence=0.99)[2] > mean_ci([1.0, 2.0, 3.0])[2]
