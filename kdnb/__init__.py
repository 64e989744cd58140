"""kdnb: the shared library of the kdnb book on knowledge distillation.

Every algorithm, loss, dataset, model, training loop and claim check used by the book's chapters lives here, with
tests; the notebooks narrate, call kdnb, plot, and check the papers' claims.

Modules: :mod:`kdnb.runtime` (device, seeds, threads, allocator, profiles), :mod:`kdnb.data`, :mod:`kdnb.models`,
:mod:`kdnb.losses`, :mod:`kdnb.training`, :mod:`kdnb.experiments` (sweeps, power-law fits), :mod:`kdnb.distill` (the
chapter-1 experiments), :mod:`kdnb.ntk` (neural tangent kernels, linearized models, function-space solvers),
:mod:`kdnb.wide` (distillation into infinitely wide students: effective logits, transfer risk, data inefficiency,
early-stopped teachers; chapters 3 to 5), :mod:`kdnb.claims`, :mod:`kdnb.plotting`.
"""

__version__ = "0.1.0"

from .claims import ClaimError, ClaimSet  # noqa: E402
from .runtime import Chapter, select_device, seed_everything, start_chapter  # noqa: E402

__all__ = ["Chapter", "ClaimError", "ClaimSet", "__version__", "select_device", "seed_everything", "start_chapter"]
