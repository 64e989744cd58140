"""Factor transfer (Kim et al. 2018): the modules, the FT loss and its conventions, the two training stages."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kdnb.core.models import DigitsCNN
from kdnb.core.training import cross_entropy_objective, fit
from kdnb.papers import factor_transfer as ft


def factors(seed, shape=(6, 4, 3, 3), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


# --- the loss ---------------------------------------------------------------------------------------------------


def test_element_mean_is_the_official_l1_of_normalised_factors():
    """The released code: nn.L1Loss() (mean over N·D) on F.normalize of the flattened factors."""
    fs, fteacher = factors(0)
    n = fs.shape[0]
    official = nn.L1Loss()(F.normalize(fs.view(n, -1)), F.normalize(fteacher.view(n, -1)))
    written = (fs.view(n, -1) / fs.view(n, -1).norm(dim=1, keepdim=True)
               - fteacher.view(n, -1) / fteacher.view(n, -1).norm(dim=1, keepdim=True)).abs().mean()
    assert float(ft.ft_loss(fs, fteacher)) == pytest.approx(float(written), abs=1e-7)
    assert float(ft.ft_loss(fs, fteacher)) == pytest.approx(float(official), abs=1e-7)


def test_per_sample_is_d_times_element_mean_and_p2_is_euclidean():
    fs, fteacher = factors(1, dtype=torch.float64)
    d = fs[0].numel()
    element = ft.ft_loss(fs, fteacher)
    per_sample = ft.ft_loss(fs, fteacher, reduction="per_sample")
    assert float(per_sample) == pytest.approx(d * float(element), rel=1e-6)
    u, v = F.normalize(fs.flatten(1)), F.normalize(fteacher.flatten(1))
    euclid = (u - v).pow(2).sum(1).sqrt().mean()
    assert float(ft.ft_loss(fs, fteacher, reduction="per_sample", p=2)) == pytest.approx(float(euclid), rel=1e-12)
    assert float(ft.ft_loss(fs, fteacher, p=2)) == pytest.approx(float((u - v).pow(2).mean()), rel=1e-12)
    # p = 2 breaks the factor D between the two reductions, so convert_beta is stated for p = 1 only
    assert float(ft.ft_loss(fs, fteacher, reduction="per_sample", p=2)) != pytest.approx(
        d * float(ft.ft_loss(fs, fteacher, p=2)), rel=1e-3)


def test_convert_beta_gives_the_same_objective_under_both_reductions():
    fs, fteacher = factors(2, dtype=torch.float64)
    d = fs[0].numel()
    beta = 500.0
    beta_ps = ft.convert_beta(beta, d)
    assert beta_ps == pytest.approx(beta / d)
    assert ft.convert_beta(beta_ps, d, source="per_sample", target="element_mean") == pytest.approx(beta)
    assert ft.convert_beta(beta, d, "element_mean", "element_mean") == beta
    assert float(beta * ft.ft_loss(fs, fteacher)) == pytest.approx(
        float(beta_ps * ft.ft_loss(fs, fteacher, reduction="per_sample")), rel=1e-12)
    assert ft.convert_beta(500, 32 * 8 * 8) == pytest.approx(0.244140625)  # the released code's CIFAR setting


finite = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(1e-3, 1e3), b=st.floats(1e-3, 1e3),
       reduction=st.sampled_from(ft.REDUCTIONS), p=st.sampled_from([1, 2, 1.5]))
def test_loss_is_invariant_to_positive_rescaling(seed, a, b, reduction, p):
    fs, fteacher = factors(seed, dtype=torch.float64)
    base = ft.ft_loss(fs, fteacher, reduction, p)
    assert float(ft.ft_loss(a * fs, b * fteacher, reduction, p)) == pytest.approx(float(base), rel=1e-9, abs=1e-12)
    assert float(ft.ft_loss(fs, a * fs, reduction, p)) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), perm_seed=st.integers(0, 10_000))
def test_joint_channel_permutation_leaves_the_loss_unchanged(seed, perm_seed):
    fs, fteacher = factors(seed, dtype=torch.float64)
    perm = torch.randperm(fs.shape[1], generator=torch.Generator().manual_seed(perm_seed))
    assert float(ft.ft_loss(fs[:, perm], fteacher[:, perm])) == pytest.approx(float(ft.ft_loss(fs, fteacher)),
                                                                               rel=1e-12)


def test_permuting_one_factor_changes_ft_but_not_the_attention_hybrid():
    fs, fteacher = factors(3, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    assert abs(float(ft.ft_loss(fs[:, perm], fteacher) - ft.ft_loss(fs, fteacher))) > 1e-3
    hybrid = ft.attention_factor_loss(fs, fteacher)
    assert float(ft.attention_factor_loss(fs[:, perm], fteacher)) == pytest.approx(float(hybrid), rel=1e-12)
    assert abs(float(hybrid) - float(ft.ft_loss(fs, fteacher))) > 1e-3  # another value on the same tensors


def test_attention_hybrid_is_repdistillers_formula():
    """RepDistiller's FactorTransfer(p1=2, p2=1): mean |normalize(mean_c f^2) differences|, written out here."""
    g = torch.Generator().manual_seed(4)
    fs, fteacher = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 7, 4, 4, generator=g)

    def attention(f):
        a = f.pow(2).mean(1).view(f.size(0), -1)
        return a / a.norm(dim=1, keepdim=True)

    expected = (attention(fs) - attention(fteacher)).abs().mean()
    assert float(ft.attention_factor_loss(fs, fteacher)) == pytest.approx(float(expected), abs=1e-7)
    with pytest.raises(ValueError, match="same N, H and W"):
        ft.attention_factor_loss(fs, torch.randn(5, 3, 2, 2))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(1, 5), hw=st.integers(1, 4))
def test_element_mean_l1_lies_in_zero_to_two_over_root_d(seed, c, hw):
    fs, fteacher = factors(seed, shape=(4, c, hw, hw), dtype=torch.float64)
    d = c * hw * hw
    value = float(ft.ft_loss(fs, fteacher))
    assert 0.0 <= value <= ft.ft_loss_upper_bound(d) + 1e-12
    # the bound is attained by opposite flat factors: u = 1/sqrt(D) = -v in every entry
    flat = torch.ones(2, c, hw, hw, dtype=torch.float64)
    assert float(ft.ft_loss(flat, -flat)) == pytest.approx(2 / math.sqrt(d), rel=1e-12)


def test_gradcheck_in_float64():
    fs, fteacher = factors(5, shape=(3, 2, 2, 2), dtype=torch.float64)
    fs.requires_grad_(True)
    fteacher.requires_grad_(True)
    for reduction in ft.REDUCTIONS:
        for p in (2, 1.5):  # |.| is not differentiable at 0; random factors never hit it, but p = 1 is piecewise
            assert torch.autograd.gradcheck(lambda a, b: ft.ft_loss(a, b, reduction, p), (fs, fteacher))
        assert torch.autograd.gradcheck(lambda a, b: ft.ft_loss(a, b, reduction, 1), (fs, fteacher))
    assert torch.autograd.gradcheck(lambda a, b: ft.attention_factor_loss(a, b), (fs, fteacher))


def test_factor_cosine():
    fs, fteacher = factors(6, dtype=torch.float64)
    expected = F.cosine_similarity(fs.flatten(1), fteacher.flatten(1), dim=1)
    assert torch.allclose(ft.factor_cosine(fs, fteacher), expected, atol=1e-12)
    assert torch.allclose(ft.factor_cosine(fs, 3 * fs), torch.ones(len(fs), dtype=torch.float64))


# --- the modules ------------------------------------------------------------------------------------------------


def test_paraphraser_and_translator_follow_the_released_layout():
    p = ft.Paraphraser(32, rate=0.5, generator=torch.Generator().manual_seed(0))
    convs = [m for m in p.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [(type(m).__name__, m.in_channels, m.out_channels) for m in convs] == [
        ("Conv2d", 32, 32), ("Conv2d", 32, 16), ("Conv2d", 16, 16),
        ("ConvTranspose2d", 16, 16), ("ConvTranspose2d", 16, 32), ("ConvTranspose2d", 32, 32)]
    assert all(m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) for m in convs)
    acts = [m for m in p.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 6 and all(a.negative_slope == 0.1 for a in acts)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in p.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ft.Paraphraser(8, batch_norm=True).modules()) == 6
    x = torch.randn(5, 32, 4, 4)
    assert p.encode(x).shape == (5, 16, 4, 4) and p(x).shape == x.shape
    assert p.decode(p.encode(x)).shape == x.shape
    t = ft.Translator(8, 16, generator=torch.Generator().manual_seed(0))
    assert t(torch.randn(5, 8, 4, 4)).shape == (5, 16, 4, 4)
    assert [m.out_channels for m in t.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 16]
    assert ft.factor_channels(64, 0.5) == 32 and ft.factor_channels(32, 0.25) == 8 and ft.factor_channels(3, 1) == 3


def test_modules_draw_from_their_generator_only():
    torch.manual_seed(0)
    a = ft.Paraphraser(8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(99)
    b = ft.Paraphraser(8, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    state = torch.random.get_rng_state()
    ft.Translator(4, 8, generator=torch.Generator().manual_seed(2))
    ft.Paraphraser(8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(state, torch.random.get_rng_state())  # the global random state is untouched


def test_reconstruction_error_is_the_stated_ratio():
    p = ft.Paraphraser(4, generator=torch.Generator().manual_seed(0))
    x = torch.rand(7, 4, 3, 3)
    with torch.no_grad():
        expected = float((x - p(x)).abs().mean() / x.abs().mean())
    assert ft.reconstruction_error(p, x) == pytest.approx(expected, rel=1e-6)


# --- the training stages ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 64, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    teacher = DigitsCNN((8, 16), generator=torch.Generator().manual_seed(1))
    fit(teacher, cross_entropy_objective(), x, [y], epochs=3, generator=torch.Generator().manual_seed(2),
        batch_size=32, progress=False)
    maps = ft.feature_map(teacher, x)
    paraphraser = ft.Paraphraser(16, generator=torch.Generator().manual_seed(3))
    history = ft.train_paraphraser(paraphraser, maps, epochs=15, generator=torch.Generator().manual_seed(4),
                                   batch_size=32, eval_features=maps[:10], progress=False)
    history.initial_error = ft.reconstruction_error(ft.Paraphraser(16, generator=torch.Generator().manual_seed(3)),
                                                    maps)
    return x, y, teacher, paraphraser, history


def checksum(module):
    return [p.detach().clone() for p in module.parameters()] + [b.detach().clone() for b in module.buffers()]


def test_stage_one_reduces_the_reconstruction_error(toy):
    *_, history = toy
    errors = history.metrics["reconstruction_error"]
    assert 0.8 < history.initial_error < 1.2  # an untrained paraphraser's output is small next to the map
    assert len(errors) == 15 and errors[-1] < 0.6 * history.initial_error
    assert "test_reconstruction_error" in history.metrics


def stage_two(toy, beta, seed=5, **options):
    x, y, teacher, paraphraser, _ = toy
    student = DigitsCNN((4, 8), generator=torch.Generator().manual_seed(seed))
    translator = ft.Translator(8, paraphraser.factor_channels, generator=torch.Generator().manual_seed(6))
    history = ft.train_ft_student(student, translator, teacher, paraphraser, x, y, beta=beta, epochs=3,
                                  generator=torch.Generator().manual_seed(7), batch_size=32, progress=False,
                                  **options)
    return student, translator, history


def test_beta_zero_is_the_cross_entropy_run_bit_for_bit(toy):
    x, y, *_ = toy
    student, _, history = stage_two(toy, beta=0.0)
    plain = DigitsCNN((4, 8), generator=torch.Generator().manual_seed(5))
    plain_history = fit(plain, cross_entropy_objective(), x, [y], epochs=3, generator=torch.Generator().manual_seed(7),
                        lr=0.05, batch_size=32, optimizer="sgd", momentum=0.9, schedule="cosine", weight_decay=5e-4,
                        progress=False)
    assert history.loss == plain_history.loss
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), plain.parameters()))
    ft_student, _, _ = stage_two(toy, beta=50.0)
    assert not all(torch.equal(p, q) for p, q in zip(ft_student.parameters(), plain.parameters()))


def test_stage_two_leaves_teacher_and_paraphraser_unchanged_and_records_metrics(toy):
    x, y, teacher, paraphraser, _ = toy
    teacher.zero_grad(set_to_none=True)
    paraphraser.zero_grad(set_to_none=True)  # what their own training left
    before = checksum(teacher), checksum(paraphraser)
    _, translator, history = stage_two(toy, beta=50.0, eval_inputs=x[:20], eval_labels=y[:20])
    after = checksum(teacher), checksum(paraphraser)
    assert all(torch.equal(a, b) for part in range(2) for a, b in zip(before[part], after[part]))
    assert set(history.metrics) == {"accuracy", "ft_loss", "factor_cosine"} and len(history.metrics["ft_loss"]) == 3
    assert history.metrics["ft_loss"][-1] < history.metrics["ft_loss"][0]
    assert all(p.grad is None for p in paraphraser.parameters()) and all(p.grad is None for p in teacher.parameters())


def test_same_seed_gives_identical_stage_two(toy):
    (s1, _, h1), (s2, _, h2) = stage_two(toy, 20.0), stage_two(toy, 20.0)
    assert h1.loss == h2.loss and all(torch.equal(p, q) for p, q in zip(s1.parameters(), s2.parameters()))


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clearly(toy):
    fs, fteacher = factors(0)
    with pytest.raises(ValueError, match="same shape"):
        ft.ft_loss(fs, fteacher[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        ft.ft_loss(fs, fteacher, reduction="sum")
    with pytest.raises(ValueError, match="p must be"):
        ft.ft_loss(fs, fteacher, p=0)
    with pytest.raises(TypeError, match="p must be"):
        ft.ft_loss(fs, fteacher, p="1")
    with pytest.raises(ValueError, match="finite|NaN|non-finite"):
        ft.ft_loss(fs.clone().fill_(float("nan")), fteacher)
    zero = fs.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match="zero L2 norm.*example 2"):
        ft.ft_loss(zero, fteacher)
    with pytest.raises(ValueError, match="4-D"):
        ft.Paraphraser(4)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="4 channels"):
        ft.Paraphraser(4)(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="rate"):
        ft.Paraphraser(4, rate=0)
    with pytest.raises(ValueError, match="rate"):
        ft.Paraphraser(4, rate=-0.5)
    with pytest.raises(ValueError, match="0 factor channels"):
        ft.factor_channels(4, 0.1)
    with pytest.raises(ValueError, match="beta"):
        ft.ft_objective(-1.0)
    with pytest.raises(ValueError, match="beta"):
        ft.convert_beta(-1.0, 10)
    with pytest.raises(ValueError, match="reconstruction"):
        ft.train_paraphraser(ft.Paraphraser(4), torch.rand(3, 4, 2, 2), epochs=1, generator=torch.Generator(),
                             reconstruction="huber")
    x, y, teacher, paraphraser, _ = toy
    with pytest.raises(ValueError, match="beta"):
        stage_two(toy, beta=-1.0)
    with pytest.raises(ValueError, match="factor channels"):
        ft.train_ft_student(DigitsCNN((4, 8)), ft.Translator(8, 3), teacher, paraphraser, x, y, beta=1.0, epochs=1,
                            generator=torch.Generator())
    with pytest.raises(ValueError, match="eval_inputs and eval_labels"):
        stage_two(toy, beta=1.0, eval_inputs=x)
    bn = ft.Paraphraser(16, batch_norm=True)
    with pytest.raises(ValueError, match="train mode"):
        ft.teacher_factors(teacher, bn, x)
    with pytest.raises(TypeError, match="Paraphraser"):
        ft.teacher_factors(teacher, nn.Identity(), x)
    with pytest.raises(TypeError, match="Translator"):
        ft.FTStudent(DigitsCNN((4, 8)), nn.Identity())
    with pytest.raises(ValueError, match="all zero"):
        ft.reconstruction_error(ft.Paraphraser(4), torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match="power"):
        ft.attention_factor_loss(fs, fteacher, power=0)


def test_ft_plus_kd_at_beta_zero_is_distill_bit_for_bit(toy):
    from kdnb.core.training import distill, predict_logits

    x, y, teacher, *_ = toy
    student, _, history = stage_two(toy, beta=0.0, rho=0.9, temperature=4.0)
    plain = DigitsCNN((4, 8), generator=torch.Generator().manual_seed(5))
    plain_history = distill(plain, x, predict_logits(teacher, x), y, rho=0.9, temperature=4.0, epochs=3,
                            generator=torch.Generator().manual_seed(7), lr=0.05, batch_size=32, optimizer="sgd",
                            momentum=0.9, schedule="cosine", weight_decay=5e-4)
    assert history.loss == plain_history.loss
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), plain.parameters()))


def test_labelled_mask_averages_the_cross_entropy_over_labelled_examples_only():
    g = torch.Generator().manual_seed(8)
    logits, labels = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (10,), generator=g)
    fs, fteacher = factors(9, shape=(10, 2, 2, 2), dtype=torch.float64)
    mask = torch.tensor([True, False] * 5)
    objective = ft.ft_objective(3.0)
    value = objective((logits, fs), labels, fteacher, None, mask)
    expected = F.cross_entropy(logits[mask], labels[mask]) + 3.0 * ft.ft_loss(fs, fteacher)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    none = objective((logits, fs), labels, fteacher, None, torch.zeros(10, dtype=torch.bool))
    assert float(none) == pytest.approx(3.0 * float(ft.ft_loss(fs, fteacher)), rel=1e-12)
    full = objective((logits, fs), labels, fteacher, None, torch.ones(10, dtype=torch.bool))
    assert float(full) == pytest.approx(float(objective((logits, fs), labels, fteacher)), rel=1e-12)
    with pytest.raises(ValueError, match="teacher's logits"):
        ft.ft_objective(1.0, rho=0.5)((logits, fs), labels, fteacher)
    with pytest.raises(ValueError, match="rho"):
        ft.ft_objective(1.0, rho=1.5)


def test_ft_metrics_match_their_definitions(toy):
    x, y, teacher, paraphraser, _ = toy
    model = ft.FTStudent(DigitsCNN((4, 8), generator=torch.Generator().manual_seed(1)),
                         ft.Translator(8, paraphraser.factor_channels, generator=torch.Generator().manual_seed(2)))
    factors_t = ft.teacher_factors(teacher, paraphraser, x)
    metrics = ft.ft_metrics(model, x, y, factors_t)
    with torch.no_grad():
        logits, factor_s = model(x)
    assert metrics["ft_loss"] == pytest.approx(float(ft.ft_loss(factor_s, factors_t)), rel=1e-6)
    assert metrics["factor_cosine"] == pytest.approx(float(F.cosine_similarity(
        factor_s.flatten(1), factors_t.flatten(1)).mean()), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    with pytest.raises(TypeError, match="FTStudent"):
        ft.ft_metrics(teacher, x, y, factors_t)


def test_convert_beta_refuses_p_other_than_one_across_reductions():
    assert ft.convert_beta(7.0, 256, "per_sample", "per_sample", p=2) == 7.0
    with pytest.raises(ValueError, match="p = 1 only"):
        ft.convert_beta(7.0, 256, p=2)
    with pytest.raises(ValueError, match="rate > "):
        ft.factor_channels(4, 0.125)  # round(0.5) is 0: the message's bound is strict
