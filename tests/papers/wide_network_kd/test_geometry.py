"""kdnb.papers.wide_network_kd.geometry: transfer risk, Theorem 1's geometry on random vectors, the accumulative angle
distribution, boundary angles, and the data-inefficiency estimator on exact power laws."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.papers.wide_network_kd import (
    accumulative_angle_distribution,
    boundary_angles,
    data_inefficiency,
    transfer_risk,
)

F64 = torch.float64


def test_transfer_risk():
    s = torch.tensor([1.0, -2.0, 3.0, -0.5], dtype=F64)
    o = torch.tensor([2.0, 1.0, 1.0, -1.0], dtype=F64)
    assert float(transfer_risk(s, o)) == 0.25
    assert transfer_risk(torch.stack([s, -s], 1), torch.stack([o, o], 1)).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="same shape"):
        transfer_risk(s, o[:3])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), dim_features=st.integers(2, 30), n=st.integers(1, 30))
def test_theorem_one_holds_for_any_vectors(seed, dim_features, n):
    """R ≤ p(∠(u, v)): if sign⟨φ, u⟩ ≠ sign⟨φ, v⟩, φ is within ∠(u, v) of the hyperplane v^⊥."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(200, dim_features, generator=g, dtype=F64) * torch.rand(200, 1, generator=g, dtype=F64)
    u, v = torch.randn(dim_features, generator=g, dtype=F64), torch.randn(dim_features, generator=g, dtype=F64)
    if n % 2:  # also nearly aligned pairs, where the bound is tight-ish
        u = v + 0.1 * u
    angle = torch.arccos((u @ v / (u.norm() * v.norm())).clamp(-1, 1))
    risk = transfer_risk(phi @ u, phi @ v)
    distance = boundary_angles(phi @ v, phi.square().sum(1), v.norm())
    # the closed form is the angle to the hyperplane computed from the vectors
    direct = (math.pi / 2 - torch.arccos((phi @ v / (phi.norm(dim=1) * v.norm())).clamp(-1, 1))).abs()
    torch.testing.assert_close(distance, direct, rtol=0, atol=1e-7)
    assert float(risk) <= float(accumulative_angle_distribution(distance, angle)) + 1e-12


def test_accumulative_angle_distribution_shapes_and_monotonicity():
    angles = torch.rand(500, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * math.pi / 2
    beta = torch.linspace(0, math.pi / 2, 20, dtype=F64)
    cdf = accumulative_angle_distribution(angles, beta)
    assert cdf.shape == (20, 3)
    assert bool((cdf.diff(dim=0) >= 0).all()) and float(cdf[-1].min()) == 1.0
    per_column = accumulative_angle_distribution(angles, beta[[3, 7, 11]])
    assert per_column.shape == (3,)
    assert per_column.tolist() == [float(cdf[3, 0]), float(cdf[7, 1]), float(cdf[11, 2])]
    assert accumulative_angle_distribution(angles[:, 0], 0.5).shape == ()


def test_boundary_angles_refuse_inconsistent_norms():
    with pytest.raises(ValueError, match="not those of a weight vector"):
        boundary_angles(torch.tensor([3.0], dtype=F64), torch.ones(1, dtype=F64), 1.0)


@settings(max_examples=15, deadline=None)
@given(slope=st.floats(-0.5, 1.5), seed=st.integers(0, 2**16))
def test_data_inefficiency_recovers_a_power_law(slope, seed):
    n = torch.arange(1, 801, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    noise = 0.3 * torch.randn(100, 800, generator=g, dtype=F64)
    norms = 2.5 * n[None, :] ** slope * torch.exp(noise - noise.mean(0))  # zero-mean noise in the logarithm
    estimate = data_inefficiency(norms, [16, 64, 256, 512])
    torch.testing.assert_close(estimate, torch.full((4,), slope, dtype=F64), rtol=0, atol=1e-9)
    exact = 2.5 * n[None, :] ** slope
    assert float(data_inefficiency(exact, 100, window=None)) == pytest.approx(100 * slope * math.log(101 / 100),
                                                                              rel=1e-9)


def test_data_inefficiency_shapes_and_errors():
    norms = torch.rand(4, 100, 3, generator=torch.Generator().manual_seed(0), dtype=F64) + 1
    assert data_inefficiency(norms, [8, 16]).shape == (2, 3)
    with pytest.raises(ValueError, match="needs prefix norms up to"):
        data_inefficiency(norms, 80)
    with pytest.raises(ValueError, match="window"):
        data_inefficiency(norms, 8, window=1.0)
    with pytest.raises(ValueError, match="positive"):
        data_inefficiency(torch.zeros(2, 10, dtype=F64), 4)
    with pytest.raises(ValueError, match=r"\(R, N\)"):
        data_inefficiency(torch.ones(10, dtype=F64), 4)

