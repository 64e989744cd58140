"""VEM (Kang et al. 2022): the grid-normalised conditional EBM, the reference channels, the bound's two gradients,
the Langevin sampler, the two losses, the 2-D GAN and its distillation, and the image-enhancement pieces."""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from skimage import data as skdata
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics.pairwise import rbf_kernel
from torch import nn

from kdnb.core.models import MLP
from kdnb.papers import gan_compression_vem as vem

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def wide_grid(low=-12.0, high=12.0, points=2001):
    return torch.linspace(low, high, points, dtype=F64)


class Quadratic(nn.Module):
    """``E(t, s) = (t - a s - m)^2 / (2 v)``: ``q(t|s) = N(a s + m, v)`` exactly."""

    def __init__(self, a=0.0, v=1.0, m=0.0, dtype=F64):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a), dtype=dtype))
        self.v = nn.Parameter(torch.tensor(float(v), dtype=dtype))
        self.m = nn.Parameter(torch.tensor(float(m), dtype=dtype))

    def forward(self, t, s):
        shape = t.shape
        return ((t.reshape(len(t), -1) - self.a * s.reshape(len(s), -1) - self.m) ** 2 / (2 * self.v)).reshape(
            shape[0], -1).sum(1)


class Confined(nn.Module):
    """A non-quadratic energy whose ``exp(-E)`` decays well inside the grid: an MLP plus ``(t - c s)^2 / (2 v)``."""

    def __init__(self, seed=0, hidden=(16, 16), c=0.5, v=1.0):
        super().__init__()
        self.base = vem.ConditionalEnergy(1, 1, hidden=hidden, generator=gen(seed), dtype=F64)
        self.c, self.v = c, v

    def forward(self, t, s):
        return self.base(t, s) + (t.reshape(-1) - self.c * s.reshape(-1)) ** 2 / (2 * self.v)


class Counting(nn.Module):
    """Wraps an energy and raises on the ``fail_at``-th call."""

    def __init__(self, energy, fail_at):
        super().__init__()
        self.energy, self.fail_at, self.calls = energy, fail_at, 0

    def forward(self, t, s):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("energy failed")
        return self.energy(t, s)


def gaussian_log_density(t, mean, var):
    return -0.5 * (t - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * torch.as_tensor(var, dtype=F64))


def grid_moments(energy, s_value, grid):
    """Mean, variance and fourth central moment of the grid distribution ``softmax_j(-E(g_j, s))``."""
    with torch.no_grad():
        e = energy(grid.reshape(-1, 1), torch.full((len(grid), 1), s_value, dtype=F64))
        q = torch.softmax(-e, dim=0)
    mean = float((q * grid).sum())
    var = float((q * (grid - mean) ** 2).sum())
    m4 = float((q * (grid - mean) ** 4).sum())
    return mean, var, m4


def mean_se(values):
    values = values.to(F64)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def grads_of(module):
    return [p.grad for p in module.parameters()]


def same_parameters(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- the grid normalisation ----------------------------------------------------------------------------------------

def test_grid_probabilities_times_the_step_sum_to_one_for_every_student_output():
    energy = vem.ConditionalEnergy(1, 1, hidden=(16, 16), generator=gen(0), dtype=F64)
    grid = torch.linspace(-6, 6, 241, dtype=F64)
    step = float(grid[1] - grid[0])
    for s in torch.randn(5, generator=gen(1), dtype=F64) * 2:
        log_q = vem.grid_log_q(energy, grid, s.repeat(len(grid)), grid)
        assert log_q.dtype == F64 and log_q.shape == (len(grid),)
        assert abs(float(log_q.detach().exp().sum()) * step - 1) < 1e-12


def test_grid_log_q_of_a_quadratic_energy_is_the_gaussian_log_density():
    energy = Quadratic(a=0.7, v=0.45)
    s = torch.randn(50, generator=gen(2), dtype=F64)
    t = 0.7 * s + math.sqrt(0.45) * torch.randn(50, generator=gen(3), dtype=F64)
    log_q = vem.grid_log_q(energy, t, s, wide_grid())
    assert torch.allclose(log_q, gaussian_log_density(t, 0.7 * s, 0.45), atol=1e-8, rtol=0)
    # shapes (N, 1) are accepted as well
    assert torch.allclose(vem.grid_log_q(energy, t[:, None], s[:, None], wide_grid()), log_q, atol=1e-14, rtol=0)


def test_grid_log_z_of_a_non_quadratic_energy_matches_adaptive_quadrature():
    energy = Confined(seed=4)
    grid = wide_grid()
    t = torch.tensor([-1.3, 0.2, 2.1], dtype=F64)
    s = torch.tensor([-1.5, 0.0, 2.0], dtype=F64)
    log_q = vem.grid_log_q(energy, t, s, grid).detach()
    for i in range(3):
        def density(x, si=float(s[i])):
            with torch.no_grad():
                return math.exp(-float(energy(torch.tensor([x], dtype=F64), torch.tensor([si], dtype=F64))))
        z, _ = integrate.quad(density, -12, 12, epsabs=0, epsrel=1e-12, limit=200)
        with torch.no_grad():
            expected = -float(energy(t[i:i + 1], s[i:i + 1])) - math.log(z)
        assert abs(float(log_q[i]) - expected) < 1e-6


def test_grid_log_q_passes_gradients_to_the_energy_and_to_s():
    energy = vem.ConditionalEnergy(1, 1, hidden=(8,), generator=gen(5), dtype=F64)
    s = torch.randn(6, generator=gen(6), dtype=F64, requires_grad=True)
    t = torch.randn(6, generator=gen(7), dtype=F64)
    vem.grid_log_q(energy, t, s, torch.linspace(-6, 6, 61, dtype=F64)).sum().backward()
    assert float(s.grad.abs().sum()) > 0
    *weights, output_bias = grads_of(energy)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in weights)
    # a constant added to E leaves q unchanged: the output bias gets no gradient
    assert float(output_bias.abs().max()) < 1e-12


def test_grid_sample_matches_the_grid_distribution_moments_and_lies_on_the_grid():
    energy = Confined(seed=8, hidden=(8,))
    grid = torch.linspace(-8, 8, 161, dtype=F64)
    values = [-1.0, 0.5, 2.0]
    n = 4000
    s = torch.tensor(values, dtype=F64).repeat_interleave(n)
    draws = vem.grid_sample(energy, s, grid, gen(9))
    assert draws.shape == (3 * n,) and draws.dtype == F64 and not draws.requires_grad
    assert bool(torch.isin(draws, grid).all())
    for k, value in enumerate(values):
        x = draws[k * n:(k + 1) * n]
        mean, var, m4 = grid_moments(energy, value, grid)
        assert abs(float(x.mean()) - mean) < 4 * math.sqrt(var / n)
        assert abs(float(x.var()) - var) < 4 * math.sqrt((m4 - var**2) / n)
    assert torch.equal(vem.grid_sample(energy, s, grid, gen(9)), draws)


# --- reference channels --------------------------------------------------------------------------------------------

def monte_carlo_information(channel, n=200_000, seed=0):
    s, t = channel.sample(n, gen(seed))
    log_marginal = gaussian_log_density(t, 0.0, torch.tensor(channel_t_variance(channel), dtype=F64))
    return mean_se(channel.log_p(t, s) - log_marginal)


def channel_t_variance(channel):
    return 1.0 if isinstance(channel, vem.GaussianChannel) else 1 + channel.noise**2


def test_bimodal_mutual_information_by_quadrature_matches_monte_carlo():
    channel = vem.bimodal_channel(0.3)
    mean, se = monte_carlo_information(channel, seed=10)
    assert abs(channel.mutual_information - mean) < 4 * se
    assert abs(channel.entropy_t - 0.5 * math.log(2 * math.pi * math.e * 1.09)) < 1e-14


def test_gaussian_mutual_information_matches_monte_carlo_and_its_gaussian_bound_is_tight():
    channel = vem.gaussian_channel(0.8)
    assert abs(channel.mutual_information - (-0.5 * math.log(1 - 0.64))) < 1e-14
    mean, se = monte_carlo_information(channel, seed=11)
    assert abs(channel.mutual_information - mean) < 4 * se
    assert channel.gaussian_bound == channel.mutual_information
    # its log p is the grid's log q of the matching quadratic energy
    s, t = channel.sample(100, gen(12))
    log_q = vem.grid_log_q(Quadratic(a=0.8, v=0.36), t, s, wide_grid())
    assert torch.allclose(channel.log_p(t, s), log_q, atol=1e-8, rtol=0)


def test_bimodal_gaussian_bound_matches_samples_and_the_grid_and_is_below_the_information():
    channel = vem.bimodal_channel(0.3)
    s, t = channel.sample(200_000, gen(13))
    mean, se = mean_se(channel.gaussian_log_q(t, s))
    assert abs(channel.entropy_t + mean - channel.gaussian_bound) < 4 * se
    assert channel.gaussian_bound < channel.mutual_information - 0.3

    class BestGaussian(nn.Module):
        def forward(self, t, s):
            return t.reshape(-1) ** 2 / (2 * (s.reshape(-1) ** 2 + 0.09))

    few_s, few_t = s[:200], t[:200]
    # q's standard deviation reaches sqrt(s^2 + 0.09) ~ 3.5: the grid must hold ~10 of them
    log_q = vem.grid_log_q(BestGaussian(), few_t, few_s, wide_grid(-40, 40, 4001))
    assert torch.allclose(log_q, channel.gaussian_log_q(few_t, few_s), atol=1e-8, rtol=0)
    estimate, estimate_se = vem.ba_estimate(log_q, channel.entropy_t)
    expected_mean, expected_se = mean_se(log_q)
    assert abs(estimate - channel.entropy_t - expected_mean) < 1e-12 and abs(estimate_se - expected_se) < 1e-12


def test_bimodal_log_p_is_a_density_in_t():
    channel = vem.bimodal_channel(0.4)
    grid = wide_grid()
    for s in (-2.0, 0.0, 0.7):
        p = channel.log_p(grid, torch.full_like(grid, s)).exp()
        assert abs(float(torch.trapezoid(p, grid)) - 1) < 1e-10


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_the_paired_gap_of_any_energy_is_not_positive(seed):
    channel = vem.bimodal_channel(0.3)
    energy = vem.ConditionalEnergy(1, 1, hidden=(8,), generator=gen(seed), dtype=F64)
    s, t = channel.sample(2000, gen(seed + 1))
    with torch.no_grad():
        log_q = vem.grid_log_q(energy, t, s, torch.linspace(-12, 12, 241, dtype=F64))
    gap, se = vem.paired_gap(log_q, channel.log_p(t, s))
    assert gap <= 3 * se


def test_paired_gap_of_the_true_density_is_zero():
    channel = vem.gaussian_channel(0.5)
    s, t = channel.sample(500, gen(14))
    log_q = vem.grid_log_q(Quadratic(a=0.5, v=0.75), t, s, wide_grid())
    gap, se = vem.paired_gap(log_q, channel.log_p(t, s))
    assert abs(gap) < 1e-8 and se < 1e-8


# --- the two gradients of the bound ----------------------------------------------------------------------------------

def test_the_cd_gradient_with_exact_grid_expectations_equals_autograd_through_log_z():
    energy = vem.ConditionalEnergy(1, 1, hidden=(16,), generator=gen(15), dtype=F64)
    grid = torch.linspace(-8, 8, 161, dtype=F64)
    channel = vem.bimodal_channel(0.3)
    x, t = channel.sample(40, gen(16))
    w = torch.tensor(0.8, dtype=F64, requires_grad=True)

    (autograd,) = torch.autograd.grad(vem.grid_log_q(energy, t, w * x, grid).mean(), [w])

    s = w * x
    n, g = len(s), len(grid)
    grid_e = energy(grid.repeat(n).reshape(-1, 1), s.repeat_interleave(g).reshape(-1, 1)).reshape(n, g)
    q = torch.softmax(-grid_e, dim=1).detach()
    surrogate = energy(t.reshape(-1, 1), s.reshape(-1, 1)).mean() - (q * grid_e).sum(1).mean()
    (cd,) = torch.autograd.grad(-surrogate, [w])
    assert abs(float(autograd)) > 1e-3
    assert abs(float(autograd) - float(cd)) < 1e-8 * max(1.0, abs(float(autograd)))


def test_bound_gradients_with_exact_grid_negatives_point_the_same_way():
    energy = Confined(seed=17, hidden=(8,), c=0.3, v=2.0)
    grid = torch.linspace(-9, 9, 121, dtype=F64)
    channel = vem.bimodal_channel(0.3)
    x, t = channel.sample(20_000, gen(18))
    w = torch.tensor([0.9, 0.4], dtype=F64, requires_grad=True)

    def student():
        return w[0] * x + w[1]

    t_neg = vem.grid_sample(energy, student().detach(), grid, gen(19))
    a, b = vem.bound_gradients(energy, student, [w], t, t_neg, grid)
    assert a.shape == b.shape == (2,) and a.dtype == b.dtype == F64
    assert float(a.norm()) > 1e-2
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.99
    assert all(p.grad is None for p in energy.parameters())


# --- Langevin ----------------------------------------------------------------------------------------------------

def test_ula_on_a_gaussian_energy_reaches_its_mean_and_variance_up_to_the_step_bias():
    m, v, h, chains = 0.7, 0.5, 0.01, 4000
    energy = Quadratic(a=0.0, v=v, m=m)
    s = torch.zeros(chains, 1, dtype=F64)
    out = vem.langevin(energy, s, steps=2000, step_size=h, kind="ula", generator=gen(20)).reshape(-1)
    # ULA's exact stationary law on N(m, v) is N(m, v / (1 - h / (4 v))): an O(h) bias of the variance only
    stationary = v / (1 - h / (4 * v))
    assert abs(float(out.mean()) - m) < 4 * math.sqrt(stationary / chains)
    assert abs(float(out.var()) - stationary) < 4 * stationary * math.sqrt(2 / chains)
    assert abs(float(out.var()) - v) < 4 * stationary * math.sqrt(2 / chains) + h / 2


def test_the_decoupled_chain_on_a_gaussian_energy_has_its_closed_form_stationary_variance():
    m, v, h, sigma, chains = -0.4, 0.5, 0.01, 0.1, 4000
    energy = Quadratic(a=0.0, v=v, m=m)
    out = vem.langevin(energy, torch.zeros(chains, 1, dtype=F64), steps=1500, step_size=h, noise_std=sigma,
                       generator=gen(21)).reshape(-1)
    stationary = sigma**2 / (1 - (1 - h / v) ** 2)
    assert abs(float(out.mean()) - m) < 4 * math.sqrt(stationary / chains)
    assert abs(float(out.var()) - stationary) < 4 * stationary * math.sqrt(2 / chains)


@pytest.mark.parametrize("kind, noise_std", [("ula", None), ("decoupled", 0.3)])
def test_one_langevin_step_is_the_stated_update(kind, noise_std):
    m, v, h = 0.2, 0.8, 0.05
    energy = Quadratic(a=0.0, v=v, m=m)
    s = torch.randn(7, 1, generator=gen(22), dtype=F64)
    out = vem.langevin(energy, s, steps=1, step_size=h, noise_std=noise_std, kind=kind, generator=gen(23))
    eps = torch.randn(s.shape, generator=gen(23), dtype=F64)
    if kind == "ula":
        expected = s - (h / 2) * (s - m) / v + math.sqrt(h) * eps
    else:
        expected = s - h * (s - m) / v + noise_std * eps
    assert torch.allclose(out, expected, atol=1e-14, rtol=0)

    noisy = vem.langevin(energy, s, steps=1, step_size=h, noise_std=noise_std, kind=kind, generator=gen(23),
                         init="noisy_student", init_std=0.5)
    g = gen(23)
    start = s + 0.5 * torch.randn(s.shape, generator=g, dtype=F64)
    eps = torch.randn(s.shape, generator=g, dtype=F64)
    drift, noise = (h / 2, math.sqrt(h)) if kind == "ula" else (h, noise_std)
    assert torch.allclose(noisy, start - drift * (start - m) / v + noise * eps, atol=1e-14, rtol=0)


def test_langevin_detaches_leaves_the_energy_untouched_and_is_seeded():
    energy = vem.ConditionalEnergy(1, 1, hidden=(8,), generator=gen(24))
    frozen = next(energy.parameters())
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in energy.parameters()]
    before = copy.deepcopy(energy.state_dict())
    s = torch.randn(32, 1, generator=gen(25), requires_grad=True)
    out = vem.langevin(energy, s, steps=5, step_size=0.1, noise_std=0.1, generator=gen(26))
    assert out.shape == s.shape and not out.requires_grad and out.grad_fn is None
    assert all(g is None for g in grads_of(energy)) and s.grad is None
    assert [p.requires_grad for p in energy.parameters()] == flags == [False] + [True] * (len(flags) - 1)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), energy.state_dict().values()))
    assert torch.equal(out, vem.langevin(energy, s, steps=5, step_size=0.1, noise_std=0.1, generator=gen(26)))
    assert not torch.equal(out, vem.langevin(energy, s, steps=5, step_size=0.1, noise_std=0.1, generator=gen(27)))
    assert not torch.equal(out, s.detach())


def test_langevin_restores_requires_grad_when_the_energy_fails():
    base = vem.ConditionalEnergy(1, 1, hidden=(4,), generator=gen(28))
    energy = Counting(base, fail_at=3)
    with pytest.raises(RuntimeError, match="energy failed"):
        vem.langevin(energy, torch.zeros(4, 1), steps=5, step_size=0.1, noise_std=0.1, generator=gen(29))
    assert all(p.requires_grad for p in base.parameters())


def test_langevin_clamp_is_the_clamp_of_the_free_chain():
    energy = Quadratic(a=0.0, v=1.0, dtype=torch.float32)
    s = torch.zeros(200, 1)
    free = vem.langevin(energy, s, steps=3, step_size=0.1, noise_std=1.0, generator=gen(30))
    clamped = vem.langevin(energy, s, steps=3, step_size=0.1, noise_std=1.0, generator=gen(30), clamp=(-0.5, 0.5))
    assert torch.equal(clamped, free.clamp(-0.5, 0.5))
    assert float(clamped.min()) == -0.5 and float(clamped.max()) == 0.5 and float(free.abs().max()) > 0.5


# --- the two losses ----------------------------------------------------------------------------------------------

def losses_problem(seed=31, n=16):
    energy = vem.ConditionalEnergy(2, 2, hidden=(8,), generator=gen(seed))
    student = MLP(3, [4], 2, generator=gen(seed + 1))
    x = torch.randn(n, 3, generator=gen(seed + 2))
    t = torch.randn(n, 2, generator=gen(seed + 3))
    t_neg = torch.randn(n, 2, generator=gen(seed + 4))
    return energy, student, x, t, t_neg


def test_mi_student_loss_moves_the_student_and_no_energy_parameter():
    energy, student, x, t, t_neg = losses_problem()
    t_neg.requires_grad_(True)
    t.requires_grad_(True)
    s = student(x)
    loss = vem.mi_student_loss(energy, t, s, t_neg)
    with torch.no_grad():
        expected = energy(t, s).mean() - energy(t_neg, s).mean()
    assert abs(float(loss.detach()) - float(expected)) < 1e-6
    loss.backward()
    assert all(g is None for g in grads_of(energy))
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads_of(student))
    assert t_neg.grad is None and t.grad is None


def test_ebm_loss_moves_the_energy_and_not_the_student():
    energy, student, x, t, t_neg = losses_problem(40)
    t_neg.requires_grad_(True)
    t.requires_grad_(True)
    s = student(x)
    loss = vem.ebm_loss(energy, t, s, t_neg, l2=0.3)
    with torch.no_grad():
        pos, neg = energy(t, s), energy(t_neg, s)
    assert abs(float(loss.detach()) - float(pos.mean() - neg.mean() + 0.3 * (pos**2 + neg**2).mean())) < 1e-6
    loss.backward()
    assert all(g is None for g in grads_of(student))
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads_of(energy))
    assert t_neg.grad is None and t.grad is None


# --- the 2-D ring, the GAN and its distillation ---------------------------------------------------------------------

def test_ring_centres_are_equally_spaced_on_the_circle():
    c = vem.ring_centres(8, 2.0)
    assert c.shape == (8, 2)
    assert torch.allclose(c.norm(dim=1), torch.full((8,), 2.0), atol=1e-6)
    assert torch.allclose(c[0], torch.tensor([2.0, 0.0]), atol=1e-6)
    angles = torch.atan2(c[:, 1], c[:, 0]).remainder(2 * math.pi)
    assert torch.allclose(angles, torch.arange(8) * (math.pi / 4), atol=1e-5)


def test_ring_samples_sit_on_their_modes_and_cover_all_of_them():
    n = 8000
    x = vem.sample_ring(n, gen(50))
    assert x.shape == (n, 2) and x.dtype == torch.float32
    centres = vem.ring_centres()
    nearest, which = torch.cdist(x, centres).min(dim=1)
    assert float(nearest.max()) < 6 * 0.05
    shares = torch.bincount(which, minlength=8).double() / n
    assert float((shares - 1 / 8).abs().max()) < 4 * math.sqrt(1 / 8 * 7 / 8 / n)
    cover = vem.mode_coverage(x, centres)
    # the distance of a 2-D N(0, 0.05^2 I) point to its centre exceeds 0.15 with probability exp(-4.5)
    inside = 1 - math.exp(-4.5)
    assert cover["modes"] == 8 and abs(cover["near"] - inside) < 4 * math.sqrt(inside * (1 - inside) / n)
    assert torch.equal(vem.sample_ring(n, gen(50)), x)


def test_mode_coverage_counts_only_modes_with_enough_share():
    centres = vem.ring_centres()
    one_mode = centres[3].repeat(990, 1)
    stray = torch.cat([one_mode, centres[5].repeat(5, 1), torch.zeros(5, 2)])
    cover = vem.mode_coverage(stray, centres, min_share=0.01)
    assert cover["modes"] == 1 and abs(cover["near"] - 0.995) < 1e-6
    assert vem.mode_coverage(stray, centres, min_share=0.004)["modes"] == 2
    assert vem.mode_coverage(torch.zeros(10, 2), centres) == {"near": 0.0, "modes": 0}


def ring_sample(g):
    return torch.randn(64, 2, generator=g), vem.sample_ring(64, g)


def ring_gan(seed=60):
    return MLP(2, [16], 2, generator=gen(seed)), MLP(2, [16], 1, generator=gen(seed + 1))


def test_fit_gan_is_deterministic_and_trains_both_networks():
    g1, d1 = ring_gan()
    init_g, init_d = copy.deepcopy(g1), copy.deepcopy(d1)
    h1 = vem.fit_gan(g1, d1, ring_sample, steps=8, generator=gen(61))
    g2, d2 = ring_gan()
    h2 = vem.fit_gan(g2, d2, ring_sample, steps=8, generator=gen(61))
    assert same_parameters(g1, g2) and same_parameters(d1, d2) and h1 == h2
    assert not same_parameters(g1, init_g) and not same_parameters(d1, init_d)
    assert len(h1["d_loss"]) == len(h1["g_loss"]) == 8 and all(np.isfinite(h1["d_loss"] + h1["g_loss"]))
    # the first discriminator loss is the BCE of the initial networks on the first batch
    inputs, real = ring_sample(gen(61))
    fake = init_g(inputs)
    bce = nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        first = (bce(init_d(real), torch.ones(64)) + bce(init_d(fake), torch.zeros(64)))
    assert abs(h1["d_loss"][0] - float(first)) < 1e-6


def test_conditional_fit_gan_with_patch_networks_is_deterministic():
    def sample(g):
        clean = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
        return vem.degrade(clean, "denoise", noise_std=0.2, generator=g), clean

    runs = []
    for _ in range(2):
        net = vem.ConvGenerator((4, 8), generator=gen(62))
        disc = vem.PatchDiscriminator(in_channels=2, channels=4, generator=gen(63))
        history = vem.fit_gan(net, disc, sample, steps=3, l1_weight=100.0, conditional=True, generator=gen(64))
        runs.append((net, history))
    assert same_parameters(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert runs[0][1]["g_loss"][0] > 1.0  # the paired L1 term, weighted 100, dominates at the start


def distil_setup(seed=70):
    teacher = MLP(2, [16], 2, generator=gen(seed))
    student = MLP(2, [4], 2, generator=gen(seed + 1))
    energy = vem.ConditionalEnergy(2, 2, hidden=(8,), generator=gen(seed + 2))
    return teacher, student, energy


SAMPLER = dict(steps=3, step_size=0.01, noise_std=0.005)


def latent_sample(g):
    return torch.randn(32, 2, generator=g), None


def test_distill_generator_with_an_energy_is_deterministic_and_never_changes_the_teacher():
    teacher, student, energy = distil_setup()
    teacher_before, energy_before, student_before = (copy.deepcopy(m) for m in (teacher, energy, student))
    h1 = vem.distill_generator(student, teacher, latent_sample, steps=6, generator=gen(71), energy=energy,
                               sampler=SAMPLER)
    assert same_parameters(teacher, teacher_before) and all(g is None for g in grads_of(teacher))
    assert not same_parameters(energy, energy_before) and not same_parameters(student, student_before)
    assert len(h1["l1"]) == len(h1["mi"]) == 6 and all(np.isfinite(h1["mi"]))

    teacher2, student2, energy2 = distil_setup()
    h2 = vem.distill_generator(student2, teacher2, latent_sample, steps=6, generator=gen(71), energy=energy2,
                               sampler=SAMPLER)
    assert h1 == h2
    assert same_parameters(student, student2) and same_parameters(energy, energy2)


def test_distill_generator_without_an_energy_is_plain_l1_and_needs_no_sampler():
    teacher, student, _ = distil_setup(80)
    init = copy.deepcopy(student)
    history = vem.distill_generator(student, teacher, latent_sample, steps=5, generator=gen(81))
    assert all(math.isnan(v) for v in history["mi"]) and len(history["l1"]) == 5
    inputs, _ = latent_sample(gen(81))
    with torch.no_grad():
        first = (init(inputs) - teacher(inputs)).abs().mean()
    assert abs(history["l1"][0] - float(first)) < 1e-6
    teacher2, student2, _ = distil_setup(80)
    vem.distill_generator(student2, teacher2, latent_sample, steps=5, generator=gen(81))
    assert same_parameters(student, student2)


def test_distill_generator_uses_precomputed_teacher_outputs_when_sample_gives_them():
    teacher, student, energy = distil_setup(90)

    def with_outputs(g):
        inputs, target = latent_sample(g)
        with torch.no_grad():
            return inputs, target, teacher(inputs)

    class Refusing(nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher must not be run when its outputs are given")

    vem.distill_generator(student, Refusing(), with_outputs, steps=4, generator=gen(91), energy=energy,
                          sampler=SAMPLER)
    teacher2, student2, energy2 = distil_setup(90)
    vem.distill_generator(student2, teacher2, latent_sample, steps=4, generator=gen(91), energy=energy2,
                          sampler=SAMPLER)
    assert same_parameters(student, student2) and same_parameters(energy, energy2)


def test_distill_generator_target_positives_need_and_use_the_target():
    def with_target(g):
        inputs = torch.randn(32, 2, generator=g)
        return inputs, torch.randn(32, 2, generator=g)

    results = {}
    for positives in ("teacher", "target"):
        teacher, student, energy = distil_setup(100)
        vem.distill_generator(student, teacher, with_target, steps=3, generator=gen(101), energy=energy,
                              sampler=SAMPLER, positives=positives)
        results[positives] = energy
    assert not same_parameters(results["teacher"], results["target"])

    teacher, student, energy = distil_setup(100)
    with pytest.raises(ValueError, match="target"):
        vem.distill_generator(student, teacher, latent_sample, steps=3, generator=gen(101), energy=energy,
                              sampler=SAMPLER, positives="target")


def test_distill_generator_refuses_target_positives_before_training_anything():
    teacher, student, energy = distil_setup(110)
    student_before, energy_before = copy.deepcopy(student), copy.deepcopy(energy)
    with pytest.raises(ValueError, match="target"):
        vem.distill_generator(student, teacher, latent_sample, steps=3, generator=gen(111), energy=energy,
                              sampler=SAMPLER, positives="target")
    assert same_parameters(student, student_before) and same_parameters(energy, energy_before)


# --- the MMD --------------------------------------------------------------------------------------------------------

def test_rbf_mmd2_matches_sklearn_kernels():
    x = torch.randn(30, 2, generator=gen(120), dtype=F64)
    y = torch.randn(20, 2, generator=gen(121), dtype=F64) + 0.5
    widths = (0.1, 0.3, 1.0, 3.0)
    xn, yn = x.numpy(), y.numpy()
    expected = 0.0
    for h in widths:
        gamma = 1 / (2 * h * h)
        expected += (rbf_kernel(xn, xn, gamma=gamma).mean() + rbf_kernel(yn, yn, gamma=gamma).mean()
                     - 2 * rbf_kernel(xn, yn, gamma=gamma).mean())
    assert abs(vem.rbf_mmd2(x, y, widths) - expected) < 1e-10
    assert abs(vem.rbf_mmd2(x, y, (0.7,)) - (rbf_kernel(xn, xn, gamma=1 / 0.98).mean()
                                              + rbf_kernel(yn, yn, gamma=1 / 0.98).mean()
                                              - 2 * rbf_kernel(xn, yn, gamma=1 / 0.98).mean())) < 1e-10
    assert expected > 1e-3


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 2.0))
def test_rbf_mmd2_is_symmetric_non_negative_and_zero_on_identical_samples(seed, shift):
    x = torch.randn(25, 3, generator=gen(seed))
    y = torch.randn(15, 3, generator=gen(seed + 1)) + shift
    value = vem.rbf_mmd2(x, y)
    assert value >= -1e-12
    assert abs(value - vem.rbf_mmd2(y, x)) < 1e-12
    assert vem.rbf_mmd2(x, x.clone()) == pytest.approx(0.0, abs=1e-12)


# --- image enhancement --------------------------------------------------------------------------------------------

def grey(name):
    image = getattr(skdata, name)()
    image = rgb2gray(image[..., :3]) if image.ndim == 3 else image / 255.0
    return image * 2 - 1


def found_in(patch, image):
    """Whether ``patch`` (P, P) is a window of ``image``."""
    p = patch.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(image, (1, p))[:, :, 0, :]
    hits = np.argwhere(np.abs(rows - patch[0]).max(axis=2) < 1e-6)
    return any(r + p <= image.shape[0] and np.abs(image[r:r + p, c:c + p] - patch).max() < 1e-6 for r, c in hits)


@pytest.fixture(scope="module")
def patches():
    return vem.photo_patches(("camera", "astronaut"), ("coins",), patch=16, n_train=10, n_test=6,
                             generator=gen(130))


def test_photo_patches_split_by_photograph_with_the_stated_shapes(patches):
    assert patches.train.shape == (10, 1, 16, 16) and patches.test.shape == (6, 1, 16, 16)
    assert patches.train.dtype == torch.float32
    assert set(patches.train_sources) == {"camera", "astronaut"} and set(patches.test_sources) == {"coins"}
    assert patches.train_sources.count("camera") == 5 and len(patches.test_sources) == 6
    assert not set(patches.train_sources) & set(patches.test_sources)
    for split in (patches.train, patches.test):
        assert float(split.min()) >= -1 and float(split.max()) <= 1
    for patch, source in zip(torch.cat([patches.train, patches.test]),
                             patches.train_sources + patches.test_sources):
        assert found_in(patch[0].double().numpy(), grey(source))


def test_photo_patches_are_seeded_and_refuse_a_shared_photograph(patches):
    again = vem.photo_patches(("camera", "astronaut"), ("coins",), patch=16, n_train=10, n_test=6,
                              generator=gen(130))
    assert torch.equal(again.train, patches.train) and torch.equal(again.test, patches.test)
    other = vem.photo_patches(("camera", "astronaut"), ("coins",), patch=16, n_train=10, n_test=6,
                              generator=gen(131))
    assert not torch.equal(other.train, patches.train)
    with pytest.raises(ValueError, match="both"):
        vem.photo_patches(("camera", "coins"), ("coins",), patch=16, n_train=4, n_test=2, generator=gen(0))
    with pytest.raises(ValueError, match="train_photos"):
        vem.photo_patches((), ("coins",), patch=16, n_train=4, n_test=2, generator=gen(0))
    with pytest.raises(ValueError, match="no_such_photo"):
        vem.photo_patches(("no_such_photo",), ("coins",), patch=16, n_train=4, n_test=2, generator=gen(0))
    with pytest.raises(ValueError, match="patch"):
        vem.photo_patches(("camera",), ("coins",), patch=400, n_train=4, n_test=2, generator=gen(0))


def test_psnr_and_ssim_match_scikit_image_per_image():
    target = torch.rand(4, 1, 16, 16, generator=gen(140)) * 2 - 1
    pred = (target + 0.1 * torch.randn(target.shape, generator=gen(141))).clamp(-1, 1)
    p, s = vem.psnr(pred, target), vem.ssim(pred, target)
    assert p.shape == s.shape == (4,)
    for i in range(4):
        a, b = target[i, 0].double().numpy(), pred[i, 0].double().numpy()
        assert abs(p[i] - peak_signal_noise_ratio(a, b, data_range=2.0)) < 1e-10
        assert abs(p[i] - 10 * math.log10(4 / np.mean((a - b) ** 2))) < 1e-9
        assert abs(s[i] - structural_similarity(a, b, data_range=2.0)) < 1e-10
    assert float(s.max()) < 1 and vem.ssim(target, target) == pytest.approx(np.ones(4), abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        vem.psnr(pred[:3], target)


def test_denoise_adds_noise_of_the_stated_std():
    clean = torch.rand(64, 1, 32, 32, generator=gen(150)) * 2 - 1
    noisy = vem.degrade(clean, "denoise", noise_std=0.2, generator=gen(151))
    noise = (noisy - clean).double().reshape(-1)
    n = noise.numel()
    assert noisy.shape == clean.shape
    assert abs(float(noise.mean())) < 4 * 0.2 / math.sqrt(n)
    assert abs(float(noise.std()) - 0.2) < 4 * 0.2 / math.sqrt(2 * n)
    assert torch.equal(vem.degrade(clean, "denoise", noise_std=0.0, generator=gen(0)), clean)
    with pytest.raises(ValueError, match="generator"):
        vem.degrade(clean, "denoise")


def test_super_resolution_input_is_constant_on_2x2_blocks_and_keeps_the_block_means():
    clean = torch.rand(3, 1, 8, 8, generator=gen(152), dtype=F64)
    low = vem.degrade(clean, "super_resolution")
    blocks = low.reshape(3, 1, 4, 2, 4, 2)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    assert torch.allclose(blocks[:, :, :, 0, :, 0], clean.reshape(3, 1, 4, 2, 4, 2).mean(dim=(3, 5)), atol=1e-14)
    assert torch.allclose(low.mean(dim=(2, 3)), clean.mean(dim=(2, 3)), atol=1e-14)
    with pytest.raises(ValueError, match="even"):
        vem.degrade(clean[..., :7, :7], "super_resolution")
    with pytest.raises(ValueError, match="task"):
        vem.degrade(clean, "inpainting")


def conv_parameters(c1, c2):
    """The parameter count of ConvGenerator((c1, c2)), layer by layer."""
    return ((9 * c1 + c1) + (16 * c1 * c2 + c2) + (9 * c2 * c2 + c2) + (16 * c2 * c1 + c1) + (9 * c1 + 1))


def test_conv_networks_have_the_stated_shapes_and_sizes():
    x = torch.randn(3, 1, 16, 16, generator=gen(160))
    teacher, student = vem.ConvGenerator((32, 64), generator=gen(161)), vem.ConvGenerator((4, 8), generator=gen(162))
    assert teacher(x).shape == student(x).shape == x.shape
    assert vem.PatchDiscriminator(generator=gen(163))(torch.cat([x, x], dim=1)).shape == (3, 1, 4, 4)
    energy = vem.ConvEnergy(channels=8, generator=gen(164))
    assert energy(x, student(x)).shape == (3,)
    with pytest.raises(ValueError, match="same shape"):
        energy(x, x[:, :, :8, :8])
    big, small = vem.n_parameters(teacher), vem.n_parameters(student)
    assert big == conv_parameters(32, 64) and small == conv_parameters(4, 8)
    assert 5e4 <= big <= 2e5 and small <= big / 20
    frozen = vem.ConvGenerator((4, 8))
    next(frozen.parameters()).requires_grad_(False)
    assert vem.n_parameters(frozen) == small - 9 * 4


def test_seeded_construction_is_deterministic():
    for make in (lambda g: vem.ConvGenerator((4, 8), generator=g), lambda g: vem.PatchDiscriminator(generator=g),
                 lambda g: vem.ConvEnergy(generator=g),
                 lambda g: vem.ConditionalEnergy(1, 1, hidden=(8,), generator=g, dtype=F64)):
        a, b, c = make(gen(170)), make(gen(170)), make(gen(171))
        assert same_parameters(a, b) and not same_parameters(a, c)


def test_conditional_energy_accepts_flat_and_column_inputs_in_its_dtype():
    energy = vem.ConditionalEnergy(1, 1, hidden=(8,), generator=gen(172), dtype=F64)
    t, s = torch.randn(5, generator=gen(173), dtype=F64), torch.randn(5, generator=gen(174), dtype=F64)
    out = energy(t, s)
    assert out.shape == (5,) and out.dtype == F64
    assert torch.equal(out, energy(t[:, None], s[:, None]))
    with pytest.raises(ValueError, match="features"):
        energy(torch.randn(5, 2, dtype=F64), s)


# --- fitting the energy on a reference channel ------------------------------------------------------------------

def test_fit_energy_by_grid_likelihood_closes_the_gap_and_reports_consistent_numbers():
    channel = vem.bimodal_channel(0.3)
    grid = torch.linspace(-8, 8, 161, dtype=F64)
    energy = vem.ConditionalEnergy(1, 1, hidden=(16,), generator=gen(180), dtype=F64)
    history = vem.fit_energy(energy, channel, iterations=40, batch_size=128, grid=grid, lr=1e-2,
                             checkpoints=(0, 40), n_eval=2000, generator=gen(181), eval_generator=gen(182))
    assert history["iteration"] == [0, 40]
    assert history["gap"][1] > history["gap"][0] + 0.1
    assert all(g <= 3 * se for g, se in zip(history["gap"], history["gap_se"]))
    # bound - gap = H(T) + mean log p on the evaluation samples, drawn from eval_generator
    s, t = channel.sample(2000, gen(182))
    offset = channel.entropy_t + float(channel.log_p(t, s).mean())
    for bound, gap in zip(history["bound"], history["gap"]):
        assert abs(bound - gap - offset) < 1e-10


def test_fit_energy_by_contrastive_divergence_is_seeded_and_trains():
    channel = vem.gaussian_channel(0.8)
    grid = torch.linspace(-8, 8, 81, dtype=F64)
    sampler = dict(steps=5, step_size=0.01, noise_std=0.005)
    runs = []
    for _ in range(2):
        energy = vem.ConditionalEnergy(1, 1, hidden=(8,), generator=gen(183))
        history = vem.fit_energy(energy, channel, method="cd", iterations=5, batch_size=32, grid=grid,
                                 sampler=sampler, checkpoints=(5,), n_eval=200, generator=gen(184),
                                 eval_generator=gen(185))
        runs.append((energy, history))
    assert same_parameters(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not same_parameters(runs[0][0], vem.ConditionalEnergy(1, 1, hidden=(8,), generator=gen(183)))
    assert runs[0][1]["iteration"] == [5] and np.isfinite(runs[0][1]["bound"][0])


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid, match", [
    (torch.tensor([0.0, 1.0, 3.0], dtype=F64), "uniform"),
    (torch.tensor([0.0, -1.0, -2.0], dtype=F64), "increasing"),
    (torch.tensor([0.0, 0.0, 0.0], dtype=F64), "increasing"),
    (torch.tensor([0.0, 1.0], dtype=F64), "at least 3"),
    (torch.zeros(3, 2, dtype=F64), "1-D"),
])
def test_grid_log_q_refuses_a_bad_grid(grid, match):
    energy = vem.ConditionalEnergy(1, 1, hidden=(4,), generator=gen(0), dtype=F64)
    with pytest.raises(ValueError, match=match):
        vem.grid_log_q(energy, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), grid)


def test_batch_sizes_that_differ_are_refused():
    energy = vem.ConditionalEnergy(1, 1, hidden=(4,), generator=gen(0), dtype=F64)
    grid = torch.linspace(-1, 1, 5, dtype=F64)
    five, four = torch.zeros(5, 1, dtype=F64), torch.zeros(4, 1, dtype=F64)
    with pytest.raises(ValueError, match="t, s and t_neg"):
        vem.ebm_loss(energy, five, four, five)
    with pytest.raises(ValueError, match="t, s and t_neg"):
        vem.mi_student_loss(energy, five, five, four)
    with pytest.raises(ValueError, match="t and s"):
        vem.grid_log_q(energy, five, four, grid)
    with pytest.raises(ValueError, match="t and s"):
        energy(five, four)
    with pytest.raises(ValueError, match="log_q and log_p"):
        vem.paired_gap(torch.zeros(5), torch.zeros(4))
    with pytest.raises(TypeError, match="energy"):
        vem.grid_log_q(lambda t, s: t, five, five, grid)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=1.5), TypeError, "steps"),
    (dict(step_size=0.0), ValueError, "step_size"),
    (dict(step_size=-0.1), ValueError, "step_size"),
    (dict(noise_std=-0.1), ValueError, "noise_std"),
    (dict(noise_std=None), ValueError, "noise_std"),
    (dict(kind="mala"), ValueError, "kind"),
    (dict(kind="ula"), ValueError, "noise_std"),
    (dict(init="gaussian"), ValueError, "init"),
    (dict(init_std=-1.0), ValueError, "init_std"),
    (dict(clamp=(1.0, -1.0)), ValueError, "clamp"),
])
def test_langevin_refuses_bad_settings(kwargs, error, match):
    settings_ = dict(steps=2, step_size=0.1, noise_std=0.1) | kwargs
    with pytest.raises(error, match=match):
        vem.langevin(Quadratic(), torch.zeros(3, 1, dtype=F64), generator=gen(0), **settings_)


@pytest.mark.parametrize("rho", [1.0, -1.0, 1.5, float("nan"), float("inf")])
def test_gaussian_channel_refuses_rho_outside_the_open_unit_interval(rho):
    with pytest.raises(ValueError, match="rho"):
        vem.gaussian_channel(rho)


@pytest.mark.parametrize("noise", [0.0, -0.3])
def test_bimodal_channel_refuses_a_non_positive_noise(noise):
    with pytest.raises(ValueError, match="noise"):
        vem.bimodal_channel(noise)


@pytest.mark.parametrize("bandwidths", [(0.1, 0.0), (-1.0,), ()])
def test_rbf_mmd2_refuses_bad_bandwidths(bandwidths):
    with pytest.raises(ValueError, match="bandwidths"):
        vem.rbf_mmd2(torch.zeros(3, 2), torch.ones(4, 2), bandwidths)
    with pytest.raises(ValueError, match="x and y"):
        vem.rbf_mmd2(torch.zeros(3, 2), torch.ones(4, 3))


def test_distill_generator_refuses_an_unknown_positives_and_an_energy_without_sampler():
    teacher, student, energy = distil_setup(190)
    with pytest.raises(ValueError, match="positives"):
        vem.distill_generator(student, teacher, latent_sample, steps=1, generator=gen(0), positives="ground_truth")
    with pytest.raises(ValueError, match="sampler"):
        vem.distill_generator(student, teacher, latent_sample, steps=1, generator=gen(0), energy=energy)


def test_fit_energy_refuses_bad_settings():
    channel = vem.gaussian_channel(0.5)
    energy = vem.ConditionalEnergy(1, 1, hidden=(4,), generator=gen(0), dtype=F64)
    common = dict(iterations=2, grid=torch.linspace(-4, 4, 9, dtype=F64), generator=gen(1),
                  eval_generator=gen(2), n_eval=10)
    with pytest.raises(ValueError, match="method"):
        vem.fit_energy(energy, channel, method="score_matching", **common)
    with pytest.raises(ValueError, match="sampler"):
        vem.fit_energy(energy, channel, method="cd", **common)
    with pytest.raises(ValueError, match="checkpoints"):
        vem.fit_energy(energy, channel, checkpoints=(3,), **common)
