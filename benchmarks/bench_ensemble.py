"""The weight solve of chapter 8 (`kdnb.papers.ensemble_distillation.capped_min_norm`), against two baselines
measured in the same run: scikit-learn's one-class SVM (the reference code's solver) and scipy's SLSQP.

One problem of the chapter's size: M = 5 teachers, gradients of N·K = 64·10 = 640 numbers each (a mini-batch of 64
digits, 10 classes), cap C = 0.6. The Gram matrix is built once; only the solve is timed, cold (from uniform
weights) and warm-started from the optimum of a nearby problem (the previous training step). Prints seconds and the
ratios of each baseline to kdnb's solve, and the largest weight difference between the three. Goal: a solve of a
millisecond or less, so that a weight solve at every training step fits the chapter's budget. Nothing here asserts
a time.
"""

import numpy as np
from scipy.optimize import minimize

from kdnb.core.runtime import set_threads
from kdnb.core.timing import time_call
from kdnb.papers.ensemble_distillation import capped_min_norm

M, DIM, CAP = 5, 640, 0.6


def slsqp(gram, cap):
    m = len(gram)
    return minimize(lambda w: w @ gram @ w, np.full(m, 1 / m), jac=lambda w: 2 * gram @ w, method="SLSQP",
                    bounds=[(0.0, cap)] * m, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                    options=dict(ftol=1e-15, maxiter=500)).x


def main():
    threads = set_threads()
    rng = np.random.default_rng(0)
    # Teachers that share a common direction plus their own, like per-teacher KD gradients at one student.
    common = rng.normal(size=DIM)
    vectors = common + rng.normal(size=(M, DIM)) * rng.uniform(0.3, 2.0, size=(M, 1))
    gram = vectors @ vectors.T
    nearby = vectors + 0.01 * rng.normal(size=vectors.shape)
    previous = capped_min_norm(nearby @ nearby.T, CAP)

    cold = time_call(lambda: capped_min_norm(gram, CAP), repeats=20)
    warm = time_call(lambda: capped_min_norm(gram, CAP, initial=previous), repeats=20)
    svm = time_call(lambda: capped_min_norm(gram, CAP, solver="ocsvm"), repeats=20)
    sq = time_call(lambda: slsqp(gram, CAP), repeats=20)
    w = capped_min_norm(gram, CAP)
    differences = [np.abs(capped_min_norm(gram, CAP, solver="ocsvm") - w).max(), np.abs(slsqp(gram, CAP) - w).max()]
    print(f"threads {threads}; M = {M}, N·K = {DIM}, C = {CAP}; weights {np.round(w, 3).tolist()}")
    print(f"kdnb capped_min_norm: cold {cold * 1e3:.3f} ms, warm-started {warm * 1e3:.3f} ms")
    print(f"one-class SVM {svm * 1e3:.3f} ms (ratio to kdnb warm {svm / warm:.1f}x, cold {svm / cold:.1f}x)")
    print(f"SLSQP {sq * 1e3:.3f} ms (ratio to kdnb warm {sq / warm:.1f}x, cold {sq / cold:.1f}x)")
    print(f"largest weight difference to kdnb: one-class SVM {differences[0]:.1e}, SLSQP {differences[1]:.1e}")


if __name__ == "__main__":
    main()
