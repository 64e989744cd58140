"""One module per paper, named by its method. A paper imports :mod:`kdnb.core` and :mod:`kdnb.kernels`, never
another paper; code that a second paper needs moves to core.

:data:`PAPERS` lists each paper's module, its key in ``book/references.bib`` and the chapters (notebook stems) that
reproduce it; the tests hold it against the bibliography and ``_toc.yml``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAPERS", "Paper"]


@dataclass(frozen=True)
class Paper:
    """A paper of the book: ``module`` under :mod:`kdnb.papers`, its ``bib_key``, and the ``chapters`` built on it."""

    module: str
    bib_key: str
    chapters: tuple[str, ...]


PAPERS = (
    Paper("hinton_distillation", "hinton2015distilling", ("01_distillation_basics",)),
    Paper("ntk_linearization", "lee2019wide", ("02_ntk_linearization",)),
    Paper("wide_network_kd", "ji2020knowledge",
          ("03_transfer_risk_bound", "04_data_inefficiency", "05_imperfect_teacher")),
)
