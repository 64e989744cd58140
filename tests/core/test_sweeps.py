"""Power-law fits and relative errors (kdnb.core.sweeps; the sweep helper is tested with the training loop)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.sweeps import power_law_fit, relative_error, sweep


@settings(max_examples=40, deadline=None)
@given(slope=st.floats(-3, 3), scale=st.floats(1e-3, 1e3), n=st.integers(2, 12))
def test_power_law_fit_recovers_an_exact_power_law(slope, scale, n):
    x = np.geomspace(1, 1e4, n)
    fit = power_law_fit(x, scale * x**slope)
    assert math.isclose(fit.slope, slope, abs_tol=1e-9)
    assert math.isclose(math.exp(fit.intercept), scale, rel_tol=1e-9)
    assert fit.r_squared > 1 - 1e-9 or abs(slope) < 1e-6
    np.testing.assert_allclose(fit(x), scale * x**slope, rtol=1e-8)


def test_power_law_fit_r_squared_drops_with_noise_and_rejects_bad_input():
    x = np.geomspace(1, 1e3, 30)
    noise = np.exp(np.random.default_rng(0).normal(0, 0.5, 30))
    noisy = power_law_fit(x, x**-0.5 * noise)
    assert 0 < noisy.r_squared < 0.99 and abs(noisy.slope + 0.5) < 0.2
    with pytest.raises(ValueError, match="> 0"):
        power_law_fit([1, 2], [1, -1])
    with pytest.raises(ValueError, match="two distinct x"):
        power_law_fit([2, 2], [1, 3])
    with pytest.raises(ValueError, match="same length"):
        power_law_fit([1, 2, 3], [1, 2])


def test_relative_error():
    reference = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert relative_error(reference, reference) == 0.0
    assert math.isclose(relative_error(reference * 1.1, reference), 0.1, rel_tol=1e-6)
    with pytest.raises(ValueError, match="nonzero norm"):
        relative_error(reference, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="same shape"):
        relative_error(reference[0], reference)
    with pytest.raises(TypeError, match="torch tensors"):
        relative_error(reference.numpy(), reference)


def test_sweep_builds_a_tidy_table_in_grid_order():
    table = sweep(lambda a, b, repeat: {"value": 10 * a + b + 100 * repeat}, {"a": [1, 2], "b": [3, 4]}, repeats=2,
                  progress=False)
    assert list(table.columns) == ["a", "b", "repeat", "value"] and len(table) == 8
    assert table["value"].tolist() == [13, 113, 14, 114, 23, 123, 24, 124]
    with pytest.raises(ValueError, match="grid\\['a'\\] must be a non-empty sequence"):
        sweep(lambda a, repeat: {}, {"a": []})
    with pytest.raises(ValueError, match="'repeat' is reserved"):
        sweep(lambda repeat: {}, {"repeat": [1]})
    with pytest.raises(TypeError, match="must return a mapping"):
        sweep(lambda a, repeat: 1.0, {"a": [1]}, progress=False)



def test_power_law_slopes_fit_each_repeat_on_its_own():
    import pandas as pd

    from kdnb.core.sweeps import power_law_slopes

    widths = np.array([64.0, 256.0, 1024.0, 4096.0])
    exponents = {0: -0.5, 1: -0.25, 2: -1.0}
    table = pd.DataFrame(
        [{"width": w, "repeat": r, "gap": (3.0 + r) * w**e} for r, e in exponents.items() for w in widths]
    )
    slopes = power_law_slopes(table, "width", "gap")
    assert list(slopes.index) == [0, 1, 2]
    np.testing.assert_allclose(slopes.to_numpy(), list(exponents.values()), atol=1e-12)
    # one fit through the averaged points would give a single, different number
    pooled = power_law_fit(widths, table.groupby("width").gap.mean().to_numpy()).slope
    assert not np.isclose(pooled, np.mean(list(exponents.values())), atol=1e-3)
    with pytest.raises(ValueError, match="no column"):
        power_law_slopes(table, "width", "missing")
    with pytest.raises(ValueError, match="repeat=0"):
        power_law_slopes(table[(table.repeat != 0) | (table.width == 64)], "width", "gap")
