"""The empirical NTK Gram matrix of a one-hidden-layer ReLU network (N = 1024 inputs of dimension 64, width 4096,
float32), by each method of `kdnb.kernels.empirical.empirical_ntk`, against two baselines measured in the same run:

* a naive per-example autograd loop (one backward pass per input, then the Gram matrix of the stacked gradients),
  which is what a user without kdnb would write;
* a plain matrix product with the same number of floating-point operations as the closed-form method, which gives
  the machine's peak for this kind of work.

Prints seconds, GFLOP/s and the ratio to the measured peak. "useful GFLOP/s" divides the closed form's FLOP count (the
least work that yields this Gram matrix) by each method's time, so all methods are on one scale. Goal: the automatic
method reaches >= 30% of the peak and >= 20x the naive loop on CPU.

Then the grid of chapter 2 (``02_ntk_linearization``): one-hidden-layer networks with N in {128, 256} inputs of
dimension d in {4, 64} and width m in {1024, 4096}, float32, where the closed form ("structured") and the Jacobian
contraction are timed (best of 2) and reported as the ratio jacobian / structured; "ntk_vp" is timed at the smallest
setting. Nothing here asserts a time.
"""

import sys

import torch

from kdnb.core.models import NTKMLP
from kdnb.kernels.empirical import dense_ntk_flops, empirical_ntk, structured_ntk_supported
from kdnb.core.timing import time_call
from kdnb.core.runtime import configure_allocator, select_device, set_threads

N, DIM, WIDTH = 1024, 64, 4096
GRID = [(n, d, m) for n in (128, 256) for d in (4, 64) for m in (1024, 4096)]  # (N inputs, dim, width), chapter 2
GRID_REPEATS = 2


def naive_per_example_loop(model, x):
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        grads = torch.autograd.grad(model(xi[None]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jacobian = torch.stack(rows)
    return jacobian @ jacobian.T


def main():
    configure_allocator()
    device = select_device()
    threads = set_threads() if device.type == "cpu" else None
    generator = torch.Generator().manual_seed(0)
    model = NTKMLP(DIM, [WIDTH], generator=generator).to(device)
    x = torch.randn(N, DIM, generator=generator).to(device)
    widths = [DIM, WIDTH, 1]
    useful = dense_ntk_flops(widths, N, N, "structured")
    print(f"device {device.type}, threads {threads}, N={N}, d={DIM}, width={WIDTH}, float32, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; auto -> "
          f"{'structured' if structured_ntk_supported(model) else 'jacobian'}")

    # Peak: a matrix product (N x k) @ (k x N) with the closed form's FLOP count.
    k = max(1, round(useful / (2 * N * N)))
    a = torch.randn(N, k, generator=generator).to(device)
    b = torch.randn(k, N, generator=generator).to(device)
    peak_seconds = time_call(lambda: a @ b, repeats=5)
    peak = 2 * N * N * k / peak_seconds

    reference = empirical_ntk(model, x, method="structured")
    rows = []
    for name, function, flops, repeats in [
        ("auto", lambda: empirical_ntk(model, x), useful, 5),
        ("structured", lambda: empirical_ntk(model, x, method="structured"), useful, 5),
        ("jacobian", lambda: empirical_ntk(model, x, method="jacobian"), dense_ntk_flops(widths, N, N, "jacobian"), 1),
        ("ntk_vp", lambda: empirical_ntk(model, x, method="ntk_vp"), dense_ntk_flops(widths, N, N, "ntk_vp"), 1),
        ("naive loop", lambda: naive_per_example_loop(model, x), dense_ntk_flops(widths, N, N, "jacobian"), 1),
    ]:
        kept = {}
        # The slow methods run once: the timed run also gives the kernel that is compared with the reference.
        seconds = time_call(lambda: kept.update(kernel=function()), repeats=repeats, warmup=1 if repeats > 1 else 0)
        difference = float((kept["kernel"] - reference).abs().max() / reference.abs().max())
        rows.append((name, seconds, flops, difference))
        print(f"  measured {name}: {seconds:.3f} s", flush=True)

    naive_seconds = next(s for n, s, _, _ in rows if n == "naive loop")
    print(f"\npeak: matrix product of {useful / 1e9:.1f} GFLOP in {peak_seconds:.3f} s = {peak / 1e9:.1f} GFLOP/s")
    print(f"{'method':12s} {'seconds':>9s} {'own GFLOP':>10s} {'own GFLOP/s':>12s} {'useful GFLOP/s':>15s} "
          f"{'of peak':>8s} {'vs naive':>9s} {'max rel diff':>13s}")
    for name, seconds, flops, difference in rows:
        print(f"{name:12s} {seconds:9.3f} {flops / 1e9:10.1f} {flops / seconds / 1e9:12.1f} "
              f"{useful / seconds / 1e9:15.1f} {useful / seconds / peak:8.1%} {naive_seconds / seconds:8.1f}x "
              f"{difference:13.1e}")
    auto_seconds = rows[0][1]
    print(f"\ngoal: auto >= 30% of peak (reached {useful / auto_seconds / peak:.0%}) and >= 20x the naive loop "
          f"(reached {naive_seconds / auto_seconds:.0f}x)")
    grid_comparison(device)


def grid_comparison(device):
    """Time the closed form against the Jacobian contraction (and NTK-vector products at the smallest setting) on the
    grid of one-hidden-layer networks of chapter 2, and print the ratios of their times."""
    print(f"\ngrid of chapter 2: one hidden layer, float32, best of {GRID_REPEATS}")
    print(f"{'setting':24s} {'structured s':>13s} {'jacobian s':>11s} {'ntk_vp s':>9s} {'jacobian / structured':>22s} "
          f"{'max rel diff':>13s}")
    ratios = []
    for n_inputs, dim, width in GRID:
        generator = torch.Generator().manual_seed(n_inputs * 100_000 + dim * 10_000 + width)
        model = NTKMLP(dim, [width], generator=generator).to(device)
        x = torch.randn(n_inputs, dim, generator=generator).to(device)
        methods = ["structured", "jacobian"] + (["ntk_vp"] if (n_inputs, dim, width) == GRID[0] else [])
        seconds, kernels = {}, {}
        for method in methods:
            seconds[method] = time_call(lambda: kernels.update({method: empirical_ntk(model, x, method=method)}),
                                        repeats=GRID_REPEATS)
        difference = max(float((kernels[m] - kernels["structured"]).abs().max() / kernels["structured"].abs().max())
                         for m in methods)
        ratio = seconds["jacobian"] / seconds["structured"]
        ratios.append(ratio)
        ntk_vp = f"{seconds['ntk_vp']:9.3f}" if "ntk_vp" in seconds else f"{'-':>9s}"
        print(f"{f'N={n_inputs}, d={dim}, m={width}':24s} {seconds['structured']:13.4f} {seconds['jacobian']:11.4f} "
              f"{ntk_vp} {ratio:21.1f}x {difference:13.1e}", flush=True)
    print(f"closed form over the grid: {min(ratios):.0f}x to {max(ratios):.0f}x faster than the Jacobian contraction")


if __name__ == "__main__":
    sys.exit(main())
