"""The papers the book reproduces: one module or subpackage per paper, named by its method.

A paper imports :mod:`kdnb.core` and :mod:`kdnb.kernels`, never another paper; code that a second paper needs moves
to core (or to kernels, if it is a kernel method). This package imports none of its papers: a chapter imports the one
it needs, for example ``from kdnb.papers import wide_network_kd as wide``.

:data:`PAPERS` lists each paper's module, its key in ``book/references.bib`` and the chapters (notebook stems) that
reproduce it. ``tests/test_architecture.py`` holds it against ``kdnb/papers/``, the bibliography, ``notebooks/`` and
``_toc.yml``, and each paper module's docstring, which opens with the paper's full citation and names its chapters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PAPERS", "Paper"]


@dataclass(frozen=True)
class Paper:
    """A paper of the book and the chapters that reproduce it.

    Parameters
    ----------
    module : str
        Name of its module or subpackage directly under :mod:`kdnb.papers`, e.g. ``"wide_network_kd"``.
    bib_key : str
        Its key in ``book/references.bib``, which the chapters cite with MyST's ``cite:p`` role.
    chapters : tuple of str
        Stems of the notebooks in ``notebooks/`` that reproduce it, in book order; each chapter belongs to exactly one
        paper.

    Raises
    ------
    TypeError
        If ``module`` or ``bib_key`` is not a str, or ``chapters`` is not a tuple of str.
    ValueError
        If ``module`` is not a Python identifier, ``bib_key`` is empty, or ``chapters`` is empty or has a stem that is
        not of the form ``NN_topic`` (two digits, an underscore, lower-case letters, digits and underscores).
    """

    module: str
    bib_key: str
    chapters: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("module", "bib_key"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not self.module.isidentifier():
            raise ValueError(f"module must be a Python identifier (a module under kdnb.papers), got {self.module!r}")
        if not self.bib_key:
            raise ValueError("bib_key must be a non-empty key of book/references.bib, got ''")
        if not isinstance(self.chapters, tuple) or not all(isinstance(c, str) for c in self.chapters):
            raise TypeError(f"chapters must be a tuple of str, got {self.chapters!r}")
        if not self.chapters:
            raise ValueError(f"chapters must name at least one notebook stem, got () for {self.module}")
        for chapter in self.chapters:
            if not re.fullmatch(r"\d\d_[a-z0-9_]+", chapter):
                raise ValueError(f"chapters must be notebook stems NN_topic, got {chapter!r} for {self.module}")


PAPERS = (
    Paper("hinton_distillation", "hinton2015distilling", ("01_distillation_basics",)),
    Paper("ntk_linearization", "lee2019wide", ("02_ntk_linearization",)),
    Paper("wide_network_kd", "ji2020knowledge",
          ("03_transfer_risk_bound", "04_data_inefficiency", "05_imperfect_teacher")),
    Paper("factor_transfer", "kim2018paraphrasing", ("06_factor_transfer",)),
    Paper("gan_compression_vem", "kang2022information", ("07_gan_compression_vem",)),
    Paper("ensemble_distillation", "du2020agree", ("08_ensemble_distillation",)),
    Paper("weakly_supervised_mil", "qu2022bidirectional", ("09_weakly_supervised_mil",)),
    Paper("spectral_student_teacher", "giambagli2023student", ("10_spectral_student_teacher",)),
    Paper("copy_or_average", "simsek2023copy", ("11_copy_or_average",)),
)
