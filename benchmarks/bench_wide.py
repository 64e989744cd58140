"""The two inner loops of chapters 3 to 5 (`kdnb.papers.wide_network_kd`), each against a baseline measured in the same run:

* every prefix norm of kernel regression, :math:`\\|\\Delta\\hat w_n\\|` for n = 1..N (N = 1024, 4 right-hand sides),
  from one Cholesky factorisation (`NestedKernelRegression`) against one `kernel_regression` solve per n, done for
  only every 8th n (the baseline's time is then multiplied by 8 for the full curve);
* effective student logits for 100 000 teacher logits and 4 soft ratios, vectorised (`effective_student_logits`,
  Newton steps safeguarded by bisection) against scipy's `brentq` called per element (timed on 2 000 elements and
  scaled).

Prints seconds and the speed-up ratios. Goal: the nested solve is >= 50x faster than per-n solves for the whole curve,
and the vectorised root finder >= 20x faster than the per-element loop. Nothing here asserts a time.
"""

import math

import torch
from scipy.optimize import brentq

from kdnb.core.data import sample_sphere
from kdnb.kernels.regression import kernel_regression
from kdnb.core.timing import time_call
from kdnb.core.runtime import set_threads
from kdnb.kernels.regression import NestedKernelRegression
from kdnb.papers.wide_network_kd import effective_student_logits, student_kernel

N, COLUMNS, STRIDE = 1024, 4, 8
RHOS, TEMPERATURE = [0.1, 0.5, 0.9, 1.0], 5.0


def per_n_solves(kernel, targets):
    return [kernel_regression(kernel[:n, :n], targets[:n]).weight_change_norm for n in range(STRIDE, N + 1, STRIDE)]


def scipy_roots(z_t, y):
    """The baseline: one scalar brentq root per element, of the plain-soft-term equation (c_T = 1)."""
    def one(zt, yg, rho):
        if rho == 1.0:
            return zt

        def g(z):
            return (rho / TEMPERATURE * (1 / (1 + math.exp(-z / TEMPERATURE)) - 1 / (1 + math.exp(-zt / TEMPERATURE)))
                    + (1 - rho) * (1 / (1 + math.exp(-z)) - yg))

        return brentq(g, -100, 100, xtol=1e-12)

    return [one(a, b, r) for a, b in zip(z_t.tolist(), y.tolist()) for r in RHOS]


def main():
    threads = set_threads()
    generator = torch.Generator().manual_seed(0)
    x = sample_sphere(N, 3, generator)
    kernel = student_kernel(x)
    targets = torch.randn(N, COLUMNS, generator=generator, dtype=torch.float64)
    nested = time_call(lambda: NestedKernelRegression(kernel, targets).norms())
    baseline = time_call(lambda: per_n_solves(kernel, targets), repeats=1) * STRIDE
    print(f"threads {threads}")
    print(f"prefix norms, N = {N}, {COLUMNS} targets: one factorisation {nested * 1e3:.1f} ms; one solve per n "
          f"{baseline * 1e3:.0f} ms (every {STRIDE}th n, x{STRIDE}); ratio {baseline / nested:.0f}x")

    z_t = 4 * torch.randn(100_000, generator=generator, dtype=torch.float64)
    y = (torch.rand(100_000, generator=generator, dtype=torch.float64) < 0.5).to(torch.float64)
    vectorised = time_call(lambda: effective_student_logits(z_t, y, RHOS, TEMPERATURE, t2_scaling=False),
                           repeats=2)
    sample = 2000
    loop = time_call(lambda: scipy_roots(z_t[:sample], y[:sample]), repeats=1, warmup=0) * (len(z_t) / sample)
    print(f"effective logits, {len(z_t)} x {len(RHOS)} rho: safeguarded Newton {vectorised:.2f} s; brentq per element "
          f"{loop:.1f} s (timed on {sample}, scaled); ratio {loop / vectorised:.0f}x")


if __name__ == "__main__":
    main()
