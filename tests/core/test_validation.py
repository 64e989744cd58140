"""kdnb.core.validation: every checker returns the converted value or raises the error that names the argument."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kdnb.core.validation import (
    TRAIN_MODE_LAYERS,
    check_bool,
    check_buffers_unchanged,
    check_choice,
    check_eval_mode,
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


# ---------------------------------------------------------------------------------------------------------------------
# check_eval_mode and check_buffers_unchanged: what the torch.func paths need of a user's module
# ---------------------------------------------------------------------------------------------------------------------

MODE_DEPENDENT = {
    "dropout": lambda: nn.Dropout(0.5),
    "dropout-p0": lambda: nn.Dropout(0.0),
    "dropout2d": lambda: nn.Dropout2d(0.1),
    "alpha-dropout": lambda: nn.AlphaDropout(0.1),
    "feature-alpha-dropout": lambda: nn.FeatureAlphaDropout(0.1),
    "batchnorm1d": lambda: nn.BatchNorm1d(4),
    "batchnorm2d": lambda: nn.BatchNorm2d(4),
    "batchnorm-without-stats": lambda: nn.BatchNorm1d(4, track_running_stats=False),
    "lazy-batchnorm": lambda: nn.LazyBatchNorm1d(),
    "sync-batchnorm": lambda: nn.SyncBatchNorm(4),
    "instancenorm-with-stats": lambda: nn.InstanceNorm1d(4, track_running_stats=True),
    "rrelu": lambda: nn.RReLU(),
    "attention-dropout": lambda: nn.MultiheadAttention(4, 2, dropout=0.1),
}
MODE_FREE = {
    "linear": lambda: nn.Linear(4, 4),
    "relu": lambda: nn.ReLU(),
    "layernorm": lambda: nn.LayerNorm(4),
    "groupnorm": lambda: nn.GroupNorm(2, 4),
    "instancenorm-without-stats": lambda: nn.InstanceNorm1d(4),
    "attention-without-dropout": lambda: nn.MultiheadAttention(4, 2),
}


class _SubclassedBatchNorm(nn.BatchNorm1d):
    pass


@pytest.mark.parametrize("kind", [*MODE_DEPENDENT, "batchnorm-subclass", "transformer-layer"])
def test_eval_mode_check_names_the_train_mode_layers_and_changes_nothing(kind):
    if kind == "batchnorm-subclass":
        layer = _SubclassedBatchNorm(4)
    elif kind == "transformer-layer":  # its dropouts are submodules
        layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8)
    else:
        layer = MODE_DEPENDENT[kind]()
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), layer))
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items() if not nn.parameter.is_lazy(v)}
    expected = "Dropout" if kind == "transformer-layer" else type(layer).__name__
    with pytest.raises(ValueError, match=rf"net has layers in train mode.*'1\.1[.a-z0-9_]*' \({expected}\)"
                                         r".*Call net\.eval\(\) first"):
        check_eval_mode(model, "net")
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert check_eval_mode(model.eval(), "net") is model
    # Only the offending layer needs eval mode: the rest may stay in train mode.
    model.train()
    for m in layer.modules():
        m.eval()
    assert check_eval_mode(model) is model


@pytest.mark.parametrize("kind", list(MODE_FREE))
def test_eval_mode_check_accepts_train_mode_layers_whose_output_does_not_depend_on_it(kind):
    model = nn.Sequential(MODE_FREE[kind](), nn.Linear(4, 1))
    assert model.training and check_eval_mode(model) is model
    root = MODE_DEPENDENT["dropout"]()  # the model itself being the layer: named '<root>'
    with pytest.raises(ValueError, match="'<root>' \\(Dropout\\)"):
        check_eval_mode(root)


@given(st.lists(st.tuples(st.sampled_from(sorted(MODE_DEPENDENT) + sorted(MODE_FREE)), st.booleans()),
                min_size=1, max_size=5))
def test_eval_mode_check_raises_exactly_when_a_mode_dependent_layer_is_training(layers):
    model = nn.Sequential(*[(MODE_DEPENDENT.get(kind) or MODE_FREE[kind])() for kind, _ in layers])
    for module, (_, training) in zip(model, layers):
        module.train(training)
    expected = {str(k) for k, (kind, training) in enumerate(layers) if kind in MODE_DEPENDENT and training}
    if expected:
        with pytest.raises(ValueError) as info:
            check_eval_mode(model)
        named = re.findall(r"'([^']+)' \(", str(info.value))
        assert {name.split(".")[0] for name in named} == expected
    else:
        assert check_eval_mode(model) is model


def test_eval_mode_check_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        check_eval_mode(lambda x: x)
    assert nn.Dropout in TRAIN_MODE_LAYERS and nn.BatchNorm2d in TRAIN_MODE_LAYERS


class _Stateful(nn.Module):
    """A module with a persistent and a non-persistent buffer, and a forward that changes them as told."""

    def __init__(self, action=None):
        super().__init__()
        self.inner = nn.Module()
        self.inner.register_buffer("count", torch.zeros(3))
        self.register_buffer("scale", torch.tensor([1.0, math.nan]), persistent=False)
        self.action = action

    def forward(self):
        if self.action == "in-place":
            self.inner.count.add_(1)
        elif self.action == "replace":
            self.scale = self.scale * 2
        elif self.action == "add":
            self.register_buffer("extra", torch.ones(1))
        elif self.action == "remove":
            del self.inner.count
        elif self.action == "fail-after-update":
            self.inner.count[0] = 7
            raise RuntimeError("the transform refused it")
        elif self.action == "fail":
            raise RuntimeError("unrelated failure")


@pytest.mark.parametrize("action, names", [("in-place", "inner.count"), ("replace", "scale"), ("add", "extra"),
                                           ("remove", "inner.count"), ("fail-after-update", "inner.count")])
def test_buffer_guard_restores_changed_buffers_and_raises(action, names):
    model = _Stateful(action)
    originals = dict(model.named_buffers())
    values = {k: v.clone() for k, v in originals.items()}
    persistent = set(model.state_dict())
    with pytest.raises(ValueError, match=rf"net's forward changed its buffers \['{names}'\] while demo evaluated it "
                                         r"\(they were restored\)") as info:
        with check_buffers_unchanged(model, "net", caller="demo"):
            model()
    restored = dict(model.named_buffers())
    assert restored.keys() == originals.keys() and set(model.state_dict()) == persistent
    for key, tensor in originals.items():
        assert restored[key] is tensor
        torch.testing.assert_close(tensor, values[key], rtol=0, atol=0, equal_nan=True)
    if action == "fail-after-update":
        assert isinstance(info.value.__cause__, RuntimeError)


def test_buffer_guard_is_silent_without_changes_and_lets_other_errors_through():
    model = _Stateful(None)  # its NaN buffer entry is unchanged, not "different from itself"
    with check_buffers_unchanged(model):
        model()
    with pytest.raises(RuntimeError, match="unrelated failure"):
        with check_buffers_unchanged(_Stateful("fail")):
            _Stateful("fail")()
    with check_buffers_unchanged(nn.Linear(2, 2)):  # no buffer at all
        pass


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=6),
       st.integers(0, 5), st.floats(-10, 10, width=32))
def test_buffer_guard_on_a_mapping_catches_and_undoes_any_in_place_change(values, index, new):
    buffer = torch.tensor(values, dtype=torch.float32)
    saved = buffer.clone()
    index = index % len(values)
    with check_buffers_unchanged({"b": buffer}, "buffers"):
        pass
    changes = not (saved[index] == new or (math.isnan(saved[index]) and math.isnan(new)))
    if changes:
        with pytest.raises(ValueError, match=r"buffers's forward changed its buffers \['b'\]"):
            with check_buffers_unchanged({"b": buffer}, "buffers"):
                buffer[index] = new
    else:
        with check_buffers_unchanged({"b": buffer}, "buffers"):
            buffer[index] = new
    torch.testing.assert_close(buffer, saved, rtol=0, atol=0, equal_nan=True)


def test_buffer_guard_refuses_what_is_neither_a_module_nor_tensors():
    for bad in (3, {"a": 1.0}, [torch.zeros(1)]):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module or a mapping of tensors"):
            with check_buffers_unchanged(bad):
                pass


# check_gram(symmetric=True): symmetric to the precision of the input's dtype, symmetrised in float64

def symmetric_matrix(n, dtype, seed):
    """A random positive semi-definite (n, n) matrix in ``dtype``, exactly symmetric (its lower triangle mirrored)."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k = (a @ a.T).to(dtype)
    return torch.tril(k) + torch.tril(k, -1).T


@given(n=st.integers(2, 8), seed=st.integers(0, 10**6), dtype=st.sampled_from([torch.float32, torch.float64]),
       shift=st.floats(0, 64))
def test_gram_symmetry_is_checked_to_the_precision_of_the_dtype(n, seed, dtype, shift):
    k = symmetric_matrix(n, dtype, seed)
    eps = torch.finfo(dtype).eps
    k[0, 1] += shift * eps * float(k.abs().max())
    k64 = k.double()
    asymmetry, tolerance = float((k64 - k64.T).abs().max()), 16 * eps * float(k64.abs().max())
    if asymmetry <= tolerance:
        out = check_gram(k, symmetric=True)
        assert out.dtype == torch.float64 and torch.equal(out, out.T)
        assert torch.equal(out, (k64 + k64.T) / 2)
    else:
        with pytest.raises(ValueError, match=f"precision of its dtype {dtype}"):
            check_gram(k, symmetric=True)
        assert torch.equal(check_gram(k), k64)  # without symmetric=True nothing is asked of the symmetry


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_symmetry_tolerance_is_16_eps_of_the_largest_entry(dtype):
    from kdnb.core.validation import GRAM_SYMMETRY_FACTOR

    assert GRAM_SYMMETRY_FACTOR == 16
    k = symmetric_matrix(5, dtype, 0)
    eps, scale = torch.finfo(dtype).eps, float(k.abs().max())
    within = k.clone()
    within[0, 1] += 8 * eps * scale
    out = check_gram(within, symmetric=True)
    mean = (float(within[0, 1]) + float(within[1, 0])) / 2
    assert float(out[0, 1]) == float(out[1, 0]) == pytest.approx(mean, rel=1e-15)
    assert float(out[0, 1]) != float(within[0, 1])  # symmetrised, not one triangle taken
    beyond = k.clone()
    beyond[0, 1] += 32 * eps * scale
    with pytest.raises(ValueError, match=r"max \|K - K\^T\| = .* above the tolerance 16 x eps"):
        check_gram(beyond, symmetric=True)


def test_an_exactly_symmetric_gram_matrix_is_returned_unchanged():
    k = symmetric_matrix(6, torch.float64, 1)
    assert check_gram(k, symmetric=True).data_ptr() == k.data_ptr()  # nothing computed, not even a copy
    k32 = symmetric_matrix(6, torch.float32, 1)
    assert torch.equal(check_gram(k32, symmetric=True), k32.double())
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        check_gram(k, symmetric=1)
