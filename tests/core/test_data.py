"""Digits loading and splits, stratified subsets, and the synthetic functions on the sphere."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.data import (
    GaussianMixtureOnSphere,
    flip_signs,
    load_digits,
    sample_sphere,
    stratified_subset,
)

F64 = torch.float64


def test_load_digits_split_is_stratified_and_deterministic():
    d = load_digits(test_size=0.3, seed=0)
    assert d.x_train.shape == (1257, 64) and d.x_test.shape == (540, 64)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    train_frac = torch.bincount(d.y_train, minlength=10) / len(d.y_train)
    test_frac = torch.bincount(d.y_test, minlength=10) / len(d.y_test)
    assert (train_frac - test_frac).abs().max() < 0.01
    again = load_digits(test_size=0.3, seed=0)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    assert not torch.equal(d.y_train, load_digits(seed=1).y_train)


def test_load_digits_normalisations():
    d = load_digits(normalization="standard", dtype=torch.float64)
    mean, std = d.x_train.mean(0), d.x_train.std(0, unbiased=False)
    assert mean.abs().max() < 1e-12
    assert torch.allclose(std[std > 0], torch.ones_like(std[std > 0]))
    u = load_digits(normalization="unit")
    assert u.x_train.min() >= 0 and u.x_train.max() <= 1
    raw = load_digits(normalization="none")
    assert raw.x_train.max() == 16
    assert d.images(d.x_test).shape == (540, 1, 8, 8)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(test_size=1.0), ValueError, "test_size must be in \\(0, 1\\)"),
    (dict(test_size=0.0), ValueError, "test_size"),
    (dict(normalization="minmax"), ValueError, "normalization must be one of"),
    (dict(dtype=torch.int64), TypeError, "dtype must be a floating-point"),
])
def test_load_digits_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_digits(**kwargs)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=5), frac=st.floats(0.01, 1.0), seed=st.integers(0, 99))
def test_stratified_subset_is_as_balanced_as_possible(sizes, frac, seed):
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    n = max(1, round(frac * len(labels)))
    idx = stratified_subset(labels, n, torch.Generator().manual_seed(seed))
    assert len(idx) == n and len(set(idx.tolist())) == n
    counts = torch.bincount(labels[idx], minlength=len(sizes))
    capacity = torch.tensor(sizes)
    # Water-filling: a class below its capacity never has fewer than another class's count minus one.
    open_counts = counts[counts < capacity]
    if len(open_counts):
        assert counts.max() - open_counts.min() <= 1
    assert torch.equal(idx, stratified_subset(labels, n, torch.Generator().manual_seed(seed)))


def test_stratified_subset_of_everything_returns_every_index():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    idx = stratified_subset(labels, 6, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(6))
    assert torch.bincount(labels[stratified_subset(labels, 4, torch.Generator())]).tolist() == [2, 1, 1]


def test_stratified_subset_errors():
    with pytest.raises(ValueError, match="n must be <= the number of examples"):
        stratified_subset(torch.zeros(3, dtype=torch.long), 4, torch.Generator())
    with pytest.raises(ValueError, match="n must be >= 1"):
        stratified_subset(torch.zeros(3, dtype=torch.long), 0, torch.Generator())
    with pytest.raises(TypeError, match="labels must be a 1-D"):
        stratified_subset(torch.zeros(3, 2, dtype=torch.long), 1, torch.Generator())


def test_sample_sphere_is_on_the_sphere_and_isotropic():
    x = sample_sphere(20000, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(x.norm(dim=1), torch.ones(20000, dtype=torch.float64))
    assert x.mean(0).abs().max() < 0.03  # mean zero within ~4 standard errors (1/sqrt(3 n))
    assert torch.allclose(x.T @ x / 20000, torch.eye(3, dtype=torch.float64) / 3, atol=0.01)
    with pytest.raises(ValueError, match="dim must be >= 2"):
        sample_sphere(3, 1, torch.Generator())


def test_gaussian_mixture_is_standardised_and_reproducible():
    f = GaussianMixtureOnSphere(dim=3, n_modes=8, generator=torch.Generator().manual_seed(0), amplitude=3.0)
    assert f.width == pytest.approx(8**-0.5)
    z = f(sample_sphere(20000, 3, torch.Generator().manual_seed(1)))
    assert z.shape == (20000,) and z.dtype == torch.float64
    assert abs(float(z.mean())) < 0.1 and float(z.std()) == pytest.approx(3.0, rel=0.05)
    g = GaussianMixtureOnSphere(dim=3, n_modes=8, generator=torch.Generator().manual_seed(0), amplitude=3.0)
    x = sample_sphere(5, 3, torch.Generator().manual_seed(2))
    assert torch.equal(f(x), g(x))
    with pytest.raises(ValueError, match="shape \\(N, 3\\)"):
        f(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="width must be a finite number > 0"):
        GaussianMixtureOnSphere(3, 2, torch.Generator(), width=0.0)


def test_points_at_angles_are_unit_vectors_at_those_angles():

    from kdnb.core.data import points_at_angles

    angles = torch.tensor([0.0, 0.3, math.pi / 2, math.pi], dtype=torch.float64)
    points = points_at_angles(angles, 4)
    assert points.shape == (4, 4)
    torch.testing.assert_close(points.norm(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(torch.arccos((points @ points[0]).clamp(-1, 1)), angles, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="angles must be finite"):
        points_at_angles([math.nan], 3)


def test_binary_digits_are_balanced_stratified_and_deterministic():
    from kdnb.core.data import load_binary_digits

    first = load_binary_digits(seed=3)
    assert first.x_train.shape == (1257, 64) and first.x_test.shape == (540, 64)
    for y in (first.y_train, first.y_test):
        assert set(y.unique().tolist()) == {0.0, 1.0}
        assert 0.45 < float(y.mean()) < 0.55  # 0-4 against 5-9: 901 against 896 images
    assert torch.equal(first.y_train, (first.digit_train < 5).to(first.y_train.dtype))
    # stratified by the ten digits: each digit's share of the test set matches its share overall, to one image
    counts_train = torch.bincount(first.digit_train, minlength=10)
    counts_test = torch.bincount(first.digit_test, minlength=10)
    expected = (counts_train + counts_test).double() * 540 / 1797
    assert float((counts_test.double() - expected).abs().max()) <= 1.0
    again = load_binary_digits(seed=3)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    other = load_binary_digits(seed=4)
    assert not torch.equal(first.x_train, other.x_train)
    sphere = load_binary_digits(seed=3, sphere=True, dtype=torch.float64)
    torch.testing.assert_close(sphere.x_train.norm(dim=1), torch.ones(1257, dtype=torch.float64))
    torch.testing.assert_close(sphere.x_train * first.x_train.double().norm(dim=1, keepdim=True),
                               first.x_train.double(), rtol=1e-5, atol=1e-5)
    assert torch.equal(load_binary_digits(threshold=3, seed=3).y_test, (first.digit_test < 3).float())
    with pytest.raises(ValueError, match="threshold"):
        load_binary_digits(threshold=10)


def test_flip_signs():
    values = torch.linspace(0.1, 1, 10000, dtype=F64)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(flip_signs(values, 0.0, g), values)
    assert torch.equal(flip_signs(values, 1.0, g), -values)
    flipped = flip_signs(values, 0.2, g)
    assert torch.equal(flipped.abs(), values)
    assert float((flipped < 0).to(F64).mean()) == pytest.approx(0.2, abs=0.015)
    with pytest.raises(ValueError, match="p_flip"):
        flip_signs(values, 1.5, g)

