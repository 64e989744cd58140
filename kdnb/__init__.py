"""kdnb: the shared library of the kdnb book on knowledge distillation.

Every algorithm, loss, dataset, model, training loop and claim check used by the book's chapters lives here, with
tests; the notebooks narrate, call kdnb, plot, and check the papers' claims.

Layout: :mod:`kdnb.core` (paper-agnostic machinery: runtime, validation, data, models, losses, training, sweeps,
claims, plotting, chapter parameters, timing), :mod:`kdnb.kernels` (neural tangent kernels and kernel methods) and
:mod:`kdnb.papers` (one module per paper, named by its method; :data:`kdnb.papers.PAPERS` lists them with their
chapters). Core imports neither of the others; kernels imports only core; a paper imports core and kernels, never
another paper.
"""

__version__ = "0.1.0"

from .core.claims import ClaimError, ClaimSet  # noqa: E402
from .core.runtime import Chapter, select_device, seed_everything, start_chapter  # noqa: E402

__all__ = ["Chapter", "ClaimError", "ClaimSet", "__version__", "select_device", "seed_everything", "start_chapter"]
