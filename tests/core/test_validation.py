"""kdnb.core.validation: every checker returns the converted value or raises the error that names the argument."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kdnb.core.validation import (
    check_bool,
    check_choice,
    check_finite_tensor,
    check_gram,
    check_in_unit_interval,
    check_kernel_targets,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_sequence,
    check_soft_ratio,
    check_soft_ratios,
    check_temperature,
    check_variance,
)


@given(st.floats(0, 1))
def test_unit_interval_returns_the_float(x):
    assert check_in_unit_interval(x, "p") == x


@pytest.mark.parametrize("value, error, message", [
    (1.5, ValueError, r"p must be in \[0, 1\], got 1.5"),
    (-1e-9, ValueError, r"p must be in \[0, 1\]"),
    (math.nan, ValueError, "p must not be NaN"),
    (True, TypeError, "p must be a real number, got bool"),
    ("0.5", TypeError, "p must be a real number, got str"),
])
def test_unit_interval_refuses(value, error, message):
    with pytest.raises(error, match=message):
        check_in_unit_interval(value, "p")


def test_unit_interval_open_low_and_scalar_tensors():
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        check_in_unit_interval(0.0, "rho", open_low=True)
    assert check_soft_ratio(torch.tensor(0.25)) == 0.25
    assert check_in_unit_interval(np.float32(0.5), "p") == 0.5


@pytest.mark.parametrize("check, good, bad, message", [
    (check_positive, 2.0, 0.0, "x must be a finite number > 0"),
    (check_positive, 2.0, math.inf, "x must be a finite number > 0"),
    (check_temperature, 0.1, -1.0, "x must be a finite number > 0"),
    (check_nonnegative, 0.0, -1e-12, "x must be a finite number >= 0"),
    (check_nonnegative, 3.0, math.inf, "x must be a finite number >= 0"),
    (check_variance, 0.0, -1.0, "x must be a finite number >= 0"),
])
def test_real_checkers(check, good, bad, message):
    assert check(good, "x") == good
    with pytest.raises(ValueError, match=message):
        check(bad, "x")


def test_variance_positive_and_positive_int():
    with pytest.raises(ValueError, match="v must be a finite number > 0"):
        check_variance(0.0, "v", positive=True)
    assert check_positive_int(3, "n") == 3
    assert check_positive_int(3.0, "n") == 3 and isinstance(check_positive_int(3.0, "n"), int)
    assert check_positive_int(0, "n", minimum=0) == 0
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_positive_int(0, "n")
    for bad in (2.5, True, "3", None):
        with pytest.raises(TypeError, match="n must be an int"):
            check_positive_int(bad, "n")


def test_choice_sequence_and_soft_ratios():
    assert check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        check_choice("c", "mode", ("a", "b"))
    assert check_sequence((1, 2), "xs") == [1, 2]
    assert check_sequence(torch.tensor([1.0, 2.0]), "xs") == [1.0, 2.0]
    with pytest.raises(TypeError, match="xs must be a sequence"):
        check_sequence(3, "xs")
    with pytest.raises(TypeError, match="xs must be a sequence"):
        check_sequence("ab", "xs")
    with pytest.raises(ValueError, match="xs must not be empty"):
        check_sequence([], "xs")
    with pytest.raises(ValueError, match="xs must be a 1-D sequence"):
        check_sequence(torch.zeros(2, 2), "xs")
    values, scalar = check_soft_ratios(0.5)
    assert scalar and values.tolist() == [0.5] and values.dtype == torch.float64
    values, scalar = check_soft_ratios([0.1, 1.0])
    assert not scalar and values.tolist() == [0.1, 1.0]
    with pytest.raises(ValueError, match="no finite effective logit"):
        check_soft_ratios([0.5, 0])
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        check_soft_ratios(1.5)


def test_tensor_checks():
    assert check_finite_tensor(torch.ones(2), "x").shape == (2,)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        check_finite_tensor([1.0], "x")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        check_finite_tensor(torch.ones(2, dtype=torch.long), "x")
    with pytest.raises(ValueError, match="x must contain only finite values"):
        check_finite_tensor(torch.tensor([1.0, math.nan]), "x")
    assert check_finite_tensor(torch.ones(2, dtype=torch.long), "x", floating=False).dtype == torch.long


def test_gram_and_targets():
    k = check_gram(torch.eye(3, dtype=torch.float32))
    assert k.dtype == torch.float64 and torch.equal(k, torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="blocks of a multi-output model"):
        check_gram(torch.zeros(2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"kernel must be a square \(N, N\) Gram matrix"):
        check_gram(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="finite entries"):
        check_gram(torch.full((2, 2), math.inf))
    with pytest.raises(TypeError, match="kernel must be a torch.Tensor"):
        check_gram(np.eye(2))
    z = check_kernel_targets(torch.ones(3, 2, dtype=torch.float32), 3, "targets", torch.device("cpu"))
    assert z.dtype == torch.float64 and z.shape == (3, 2)
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\) or \(3, k\)"):
        check_kernel_targets(torch.ones(4), 3, "targets", "cpu")
    with pytest.raises(ValueError, match="targets must be floating point with finite entries"):
        check_kernel_targets(torch.ones(3, dtype=torch.long), 3, "targets", "cpu")


def test_bool_check_accepts_numpy_bools_and_refuses_truthy_stand_ins():
    assert check_bool(True, "flag") is True and check_bool(False, "flag") is False
    assert check_bool(np.bool_(True), "flag") is True and check_bool(np.False_, "flag") is False
    for bad in ("no", 1, 0, None, torch.tensor(True), 1.0):
        with pytest.raises(TypeError, match="flag must be True or False"):
            check_bool(bad, "flag")


def test_sequence_may_be_allowed_empty():
    assert check_sequence([], "xs", allow_empty=True) == []
    assert check_sequence((), "xs", allow_empty=True) == []
    assert check_sequence(torch.zeros(0), "xs", allow_empty=True) == []
    assert check_sequence([3], "xs", allow_empty=True) == [3]
    with pytest.raises(TypeError, match="xs must be a sequence"):
        check_sequence(0, "xs", allow_empty=True)
    with pytest.raises(ValueError, match="xs must not be empty"):
        check_sequence([], "xs")
