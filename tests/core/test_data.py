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


def _sklearn_split(seed, **size):
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    return train_test_split(bunch.data, bunch.target, **size, stratify=bunch.target, random_state=seed)


@pytest.mark.parametrize("seed", [0, 7])
def test_default_split_is_the_explicit_sklearn_split(seed):
    x_tr, x_te, y_tr, y_te = _sklearn_split(seed, test_size=0.3)
    d = load_digits(seed=seed, normalization="none", dtype=torch.float64)
    assert torch.equal(d.x_train, torch.as_tensor(x_tr)) and torch.equal(d.x_test, torch.as_tensor(x_te))
    assert torch.equal(d.y_train, torch.as_tensor(y_tr)) and torch.equal(d.y_test, torch.as_tensor(y_te))
    assert torch.equal(load_digits(0.3, seed).x_train, load_digits(seed=seed).x_train)


@pytest.mark.parametrize("train_size, n_train", [(100, 100), (1000, 1000), (0.25, 449), (0.5, 898)])
def test_train_size_count_and_fraction_give_stratified_deterministic_splits(train_size, n_train):
    d = load_digits(train_size=train_size, seed=3, normalization="none", dtype=torch.float64)
    assert d.x_train.shape == (n_train, 64) and d.x_test.shape == (1797 - n_train, 64)
    assert len(d.y_train) == n_train and len(d.y_test) == 1797 - n_train
    # stratified: each class's training count is its share of n_train, to within one image
    overall = torch.bincount(torch.cat([d.y_train, d.y_test]), minlength=10).double()
    assert float((torch.bincount(d.y_train, minlength=10) - overall * n_train / 1797).abs().max()) <= 1.0
    again = load_digits(train_size=train_size, seed=3, normalization="none", dtype=torch.float64)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    assert not torch.equal(d.y_train, load_digits(train_size=train_size, seed=4).y_train)
    x_tr, _, y_tr, _ = _sklearn_split(3, train_size=train_size)
    assert torch.equal(d.x_train, torch.as_tensor(x_tr)) and torch.equal(d.y_train, torch.as_tensor(y_tr))


def test_train_size_reaches_load_binary_digits():
    from kdnb.core.data import load_binary_digits

    b = load_binary_digits(train_size=300, seed=1)
    d = load_digits(train_size=300, seed=1)
    assert b.x_train.shape == (300, 64) and torch.equal(b.digit_train, d.y_train)
    assert torch.equal(b.x_test, d.x_test)
    with pytest.raises(ValueError, match="not both"):
        load_binary_digits(test_size=0.2, train_size=0.5)


def test_unit_normalisation_is_pixels_over_16_in_the_closed_unit_interval():
    raw = load_digits(normalization="none", dtype=torch.float64)
    unit = load_digits(normalization="unit", dtype=torch.float64)
    assert torch.equal(unit.x_train, raw.x_train / 16) and torch.equal(unit.x_test, raw.x_test / 16)
    assert float(unit.x_train.min()) == 0.0 and float(unit.x_train.max()) == 1.0  # both ends attained
    assert set(torch.unique(raw.x_train * 1).tolist()) == set(range(17))  # raw pixels are the integers 0..16


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(test_size=0.3, train_size=100), ValueError, "not both"),
    (dict(train_size=9), ValueError, "train_size must be a count in \\[10, 1787\\]"),
    (dict(train_size=1788), ValueError, "train_size must be a count"),
    (dict(train_size=1.0), ValueError, "train_size must be in \\(0, 1\\)"),
    (dict(train_size=0.0), ValueError, "train_size must be in \\(0, 1\\)"),
    (dict(train_size=0.001), ValueError, "train_size must leave between 10 and 1787"),
    (dict(train_size=True), TypeError, "train_size must be an int"),
    (dict(train_size="half"), TypeError, "train_size must be an int"),
    (dict(test_size=0.9999), ValueError, "test_size must leave"),
])
def test_load_digits_rejects_bad_sizes(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_digits(**kwargs)


def test_corrupt_labels_rate_is_binomial_and_always_changes_the_class():
    from kdnb.core.data import corrupt_labels

    n, p, n_classes = 20000, 0.3, 10
    labels = torch.arange(n) % n_classes
    noisy, flipped = corrupt_labels(labels, p, n_classes, torch.Generator().manual_seed(0))
    assert noisy.dtype == labels.dtype and flipped.dtype == torch.bool and noisy.shape == (n,)
    assert torch.equal(flipped, noisy != labels)  # a flipped label never keeps its class
    assert noisy.min() >= 0 and noisy.max() < n_classes
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(float(flipped.double().mean()) - p) < 4 * sd
    # symmetric: the new class is uniform over the other nine
    offsets = (noisy[flipped] - labels[flipped]) % n_classes
    counts = torch.bincount(offsets, minlength=n_classes).double()
    assert counts[0] == 0
    expected = flipped.sum() / (n_classes - 1)
    assert float((counts[1:] - expected).abs().max()) < 4 * math.sqrt(float(expected))
    again = corrupt_labels(labels, p, n_classes, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], noisy) and torch.equal(again[1], flipped)
    assert not torch.equal(corrupt_labels(labels, p, n_classes, torch.Generator().manual_seed(1))[0], noisy)


def test_corrupt_labels_over_many_draws_and_modes():
    from kdnb.core.data import corrupt_labels

    labels = torch.tensor([0, 1, 2, 2, 1], dtype=torch.int32)
    g = torch.Generator().manual_seed(5)
    rates = torch.stack([corrupt_labels(labels, 0.2, 3, g)[1] for _ in range(4000)]).double().mean(0)
    assert float((rates - 0.2).abs().max()) < 4 * math.sqrt(0.2 * 0.8 / 4000)
    assert torch.equal(corrupt_labels(labels, 0.0, 3, g)[0], labels)
    everything, flipped = corrupt_labels(labels, 1.0, 3, g)
    assert bool(flipped.all()) and bool((everything != labels).all())
    # pair noise moves to the next class; the same generator state gives the same mask in both modes
    pair, mask_pair = corrupt_labels(labels, 0.5, 3, torch.Generator().manual_seed(2), mode="pair")
    _, mask_sym = corrupt_labels(labels, 0.5, 3, torch.Generator().manual_seed(2))
    assert torch.equal(mask_pair, mask_sym)
    assert torch.equal(pair, torch.where(mask_pair, (labels + 1) % 3, labels))
    # nested in p: the flips at a smaller rate are among those at a larger one
    small = corrupt_labels(torch.zeros(500, dtype=torch.long), 0.1, 4, torch.Generator().manual_seed(3))[1]
    large = corrupt_labels(torch.zeros(500, dtype=torch.long), 0.4, 4, torch.Generator().manual_seed(3))[1]
    assert bool((large | ~small).all()) and int(large.sum()) > int(small.sum())


@pytest.mark.parametrize("args, error, message", [
    ((torch.tensor([0, 1]), 1.5, 2), ValueError, "p must be in \\[0, 1\\]"),
    ((torch.tensor([0, 3]), 0.1, 3), ValueError, "labels must lie in \\[0, 3\\)"),
    ((torch.tensor([0, -1]), 0.1, 3), ValueError, "labels must lie in"),
    ((torch.tensor([0, 1]), 0.1, 1), ValueError, "n_classes must be >= 2"),
    ((torch.tensor([0.0, 1.0]), 0.1, 2), TypeError, "integer tensor"),
    ((torch.tensor([[0, 1]]), 0.1, 2), TypeError, "1-D"),
    (([0, 1], 0.1, 2), TypeError, "1-D"),
])
def test_corrupt_labels_rejects_bad_arguments(args, error, message):
    from kdnb.core.data import corrupt_labels

    with pytest.raises(error, match=message):
        corrupt_labels(*args, torch.Generator())
    with pytest.raises(ValueError, match="mode must be one of"):
        corrupt_labels(torch.tensor([0, 1]), 0.1, 2, torch.Generator(), mode="asymmetric")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        corrupt_labels(torch.tensor([0, 1]), 0.1, 2, 0)


def test_corrupt_labels_refuses_classes_the_label_dtype_cannot_hold():
    from kdnb.core.data import corrupt_labels

    labels = torch.arange(250, dtype=torch.uint8)
    with pytest.raises(ValueError, match="n_classes must be <= 256 for labels of dtype torch.uint8"):
        corrupt_labels(labels, 1.0, 300, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="n_classes must be <= 128 for labels of dtype torch.int8"):
        corrupt_labels(torch.zeros(3, dtype=torch.int8), 0.5, 129, torch.Generator())
    # 256 classes still fit in uint8 (labels 0 to 255): the noisy labels match those of int64 labels, same draws
    narrow, flipped = corrupt_labels(labels, 1.0, 256, torch.Generator().manual_seed(0))
    wide, wide_flipped = corrupt_labels(labels.long(), 1.0, 256, torch.Generator().manual_seed(0))
    assert narrow.dtype == torch.uint8 and torch.equal(narrow.long(), wide) and torch.equal(flipped, wide_flipped)
    assert bool((narrow != labels).all())


def test_load_digits_refuses_a_bool_seed_and_a_numpy_dtype():
    import numpy as np

    with pytest.raises(TypeError, match="seed must be an int, got bool"):
        load_digits(seed=True)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        load_digits(seed=1.0)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
        load_digits(seed=-1)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch dtype"):
        load_digits(dtype=np.float32)
    assert torch.equal(load_digits(seed=np.int64(1)).y_train, load_digits(seed=1).y_train)


def test_load_binary_digits_requires_a_bool_sphere():
    from kdnb.core.data import load_binary_digits

    with pytest.raises(TypeError, match="sphere must be True or False"):
        load_binary_digits(sphere="no")
