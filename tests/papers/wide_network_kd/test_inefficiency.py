"""Tests of kdnb.papers.wide_network_kd.inefficiency: per-repeat data inefficiency, the angle identity, the
random-label level, the label-smoothing spread and the least favourable cell."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.claims import bootstrap_interval
from kdnb.core.data import sample_sphere
from kdnb.kernels.regression import (
    NestedKernelRegression,
    kernel_regression,
    weight_change_cosine,
)
from kdnb.papers.wide_network_kd import (
    data_inefficiency,
    label_smoothing_spread,
    least_favourable,
    log_cosine_sum,
    per_repeat_inefficiency,
    random_label_level,
    student_kernel,
)

F64 = torch.float64


def test_per_repeat_inefficiency_averages_to_the_pooled_estimate():
    g = torch.Generator().manual_seed(0)
    norms = torch.rand(5, 200, 3, generator=g, dtype=F64).cumsum(1) + 0.1
    per = per_repeat_inefficiency(norms, [16, 64])
    assert per.shape == (5, 2, 3)
    torch.testing.assert_close(per.mean(0), data_inefficiency(norms, [16, 64]), rtol=0, atol=1e-12)
    # each row is the estimate of that repeat alone
    torch.testing.assert_close(per[2], data_inefficiency(norms[2:3], [16, 64]))
    assert per_repeat_inefficiency(norms[..., 0], 16).shape == (5,)
    with pytest.raises(ValueError, match="norms"):
        per_repeat_inefficiency(torch.ones(10, dtype=F64), 4)


@settings(max_examples=10, deadline=None)
@given(slope=st.floats(0.0, 1.5), seed=st.integers(0, 2**16))
def test_per_repeat_inefficiency_recovers_each_repeats_power_law(slope, seed):
    n = torch.arange(1, 401, dtype=F64)
    scale = 1 + torch.rand(3, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)
    per = per_repeat_inefficiency(scale * n[None, :] ** slope, [32, 128])
    torch.testing.assert_close(per, torch.full((3, 2), slope, dtype=F64), rtol=0, atol=1e-9)


def test_log_cosine_sum_equals_the_angle_from_inner_products():
    """The book's identity: sum_{k=n}^{N-1} I(k)/k = -E ln cos(angle to the student on all N points), with the
    angles from explicit inner products a_nᵀ K a_N of independent direct solves."""
    n_values, big_n = [4, 16, 40], 64
    norms, log_cos = [], []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x = sample_sphere(big_n, 3, g)
        z = torch.randn(big_n, 2, generator=g, dtype=F64)
        kernel = student_kernel(x)
        norms.append(NestedKernelRegression(kernel, z).norms())
        oracle = kernel_regression(kernel, z)
        rows = []
        for n in n_values:
            a_n = torch.linalg.solve(kernel[:n, :n], z[:n])
            padded = torch.zeros(big_n, 2, dtype=F64)
            padded[:n] = a_n
            rows.append(torch.log(weight_change_cosine(kernel, padded, oracle.coefficients)))
        log_cos.append(torch.stack(rows))
    left = log_cosine_sum(torch.stack(norms), n_values)
    right = -torch.stack(log_cos).mean(0)
    assert left.shape == (3, 2)
    torch.testing.assert_close(left, right, rtol=1e-7, atol=1e-9)
    assert bool((left > 0).all())  # a student on fewer points is never closer than the whole sample


def test_log_cosine_sum_fails_for_norms_that_are_not_prefix_norms():
    """The sum telescopes to E ln‖Δŵ_N‖ − E ln‖Δŵ_n‖: an interior error cancels, one at n or at N does not, so the
    chapter's comparison with angles from inner products can fail."""
    n = torch.arange(1, 101, dtype=F64)
    norms = (n**0.5)[None, :].repeat(2, 1)
    exact = log_cosine_sum(norms, [10, 50])
    torch.testing.assert_close(exact, 0.5 * torch.log(100 / torch.tensor([10.0, 50.0], dtype=F64)))
    interior = norms.clone()
    interior[:, 29] *= 1.1
    torch.testing.assert_close(log_cosine_sum(interior, [10, 50]), exact)
    at_n = norms.clone()
    at_n[:, 9] *= 1.1
    assert float(log_cosine_sum(at_n, 10) - exact[0]) == pytest.approx(-math.log(1.1))
    at_end = norms.clone()
    at_end[:, -1] *= 1.1
    assert float(log_cosine_sum(at_end, 10) - exact[0]) == pytest.approx(math.log(1.1))


def test_log_cosine_sum_refuses_bad_input():
    norms = torch.ones(2, 10, dtype=F64)
    with pytest.raises(ValueError, match="N - 1"):
        log_cosine_sum(norms, 10)
    with pytest.raises(ValueError, match="norms"):
        log_cosine_sum(torch.ones(10, dtype=F64), 3)
    with pytest.raises(TypeError, match="n"):
        log_cosine_sum(norms, 2.5)
    with pytest.raises(ValueError, match="non-empty"):
        log_cosine_sum(norms, [])


def test_random_label_level():
    assert random_label_level(3) == 0.75
    assert random_label_level(2) == 1.0
    assert random_label_level(5) == pytest.approx(0.625)
    levels = [random_label_level(d) for d in range(2, 40)]
    assert all(a > b > 0.5 for a, b in pairwise(levels))
    with pytest.raises(ValueError, match="dim"):
        random_label_level(1)
    with pytest.raises(TypeError, match="dim"):
        random_label_level(3.5)


def test_random_label_level_is_approached_on_the_sphere():
    """A coarse check that the heuristic describes the student's kernel: the measured level at d = 3 is near 0.75,
    and it is lower at d = 6."""
    def level(dim):
        norms = []
        for seed in range(6):
            g = torch.Generator().manual_seed(seed)
            x = sample_sphere(400, dim, g)
            norms.append(NestedKernelRegression(student_kernel(x), torch.randn(400, generator=g, dtype=F64)).norms())
        return float(data_inefficiency(torch.stack(norms), [128, 256]).mean())

    low_dim, high_dim = level(3), level(6)
    assert abs(low_dim - random_label_level(3)) < 0.15
    assert high_dim < low_dim


def test_label_smoothing_spread():
    constant = torch.tensor([2.0, -2.0, 2.0, -2.0], dtype=F64)
    assert float(label_smoothing_spread(constant)) == 0.0
    varied = torch.tensor([1.0, -3.0], dtype=F64)
    assert float(label_smoothing_spread(varied)) == pytest.approx(0.5)  # |z| = 1, 3: std 1, mean 2
    both = label_smoothing_spread(torch.stack([constant, 3 * constant], 1))
    assert both.shape == (2,) and bool((both == 0).all())
    # scale invariant
    z = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(label_smoothing_spread(7 * z), label_smoothing_spread(z))
    with pytest.raises(ValueError, match="all zero"):
        label_smoothing_spread(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="G >= 2"):
        label_smoothing_spread(torch.ones(1, dtype=F64))


def test_least_favourable_picks_the_interval_nearest_the_bound():
    rng = np.random.default_rng(0)
    samples = np.stack([rng.normal(1.0, 0.1, 20), rng.normal(0.8, 0.1, 20), rng.normal(0.8, 0.5, 20)], 1)
    lows = [bootstrap_interval(samples[:, j])[0] for j in range(3)]
    highs = [bootstrap_interval(samples[:, j])[1] for j in range(3)]
    assert least_favourable(samples, low=0.5) == int(np.argmin(lows)) == 2  # the wide interval reaches lowest
    assert least_favourable(samples, high=2.0) == int(np.argmax(highs))
    assert least_favourable(torch.tensor(samples), low=0.0) == 2
    with pytest.raises(ValueError, match="exactly one"):
        least_favourable(samples)
    with pytest.raises(ValueError, match="exactly one"):
        least_favourable(samples, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="R >= 2"):
        least_favourable(samples[:1], low=0.0)
    with pytest.raises(ValueError, match="finite"):
        least_favourable(np.full((3, 2), np.nan), low=0.0)
