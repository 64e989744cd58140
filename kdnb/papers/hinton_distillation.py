r"""Distilling the knowledge in a neural network: the experiments of chapter 1.

Geoffrey Hinton, Oriol Vinyals and Jeff Dean. *Distilling the Knowledge in a Neural Network.* NIPS 2014 Deep
Learning Workshop, 2015. arXiv:1503.02531.

Students trained from scratch, by distillation, or by distillation on an unlabelled transfer set, and what the soft
targets carry (class similarities, the size of their gradient with and without the :math:`T^2` factor). The loss and
the training loop are in :mod:`kdnb.core`. A *transfer set* is the set of inputs on which the student matches the teacher; hard labels may be known for only part
of it (``labelled``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.data import stratified_subset
from ..core.losses import kd_loss_gradient, soften
from ..core.models import MLP
from ..core.training import distill, predict_logits, train_classifier

__all__ = ["REGIMES", "mean_soft_targets", "soft_gradient_norm", "train_student"]

REGIMES = ("scratch", "kd", "transfer")


def soft_gradient_norm(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, t2_scaling: bool
) -> float:
    r"""Mean over examples of :math:`\|\partial \ell_{soft} / \partial z_s\|_2`, the soft term's pull on the logits.

    Hinton et al. (2015) scale the soft term by :math:`T^2` because this norm otherwise falls like :math:`1/T^2`.
    """
    grad = kd_loss_gradient(student_logits, teacher_logits, rho=1.0, temperature=temperature, t2_scaling=t2_scaling)
    return float(grad.norm(dim=1).mean())


@torch.no_grad()
def mean_soft_targets(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, temperature: float,
                      n_classes: int) -> torch.Tensor:
    """(C, C) matrix whose row c is the teacher's mean softened distribution over inputs of class c."""
    probs = soften(predict_logits(model, inputs), temperature)
    out = torch.zeros(n_classes, n_classes, dtype=probs.dtype)
    for c in range(n_classes):
        members = labels == c
        if not bool(members.any()):
            raise ValueError(f"class {c} has no examples among the inputs")
        out[c] = probs[members].mean(0).cpu()
    return out


def train_student(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    regime: str,
    n_labels: int | None,
    hidden: tuple[int, ...],
    rho: float,
    temperature: float,
    epochs: int,
    generator: torch.Generator,
    lr: float = 1e-2,
    t2_scaling: bool = True,
    omit_class: int | None = None,
) -> nn.Module:
    """Train a fresh MLP student in one of three regimes and return it.

    * ``"scratch"``: cross-entropy on the ``n_labels`` labelled examples only (no teacher);
    * ``"kd"``: the KD loss on the same ``n_labels`` examples (the teacher's soft targets on those inputs);
    * ``"transfer"``: the KD loss on every training input (the transfer set), with hard labels on ``n_labels`` only.

    The labelled examples are a class-stratified subset drawn with ``generator`` (all of them for ``n_labels=None``).
    ``omit_class`` removes every example of that class from the training data first (Hinton et al. 2015, §3: a
    student that never sees a 3). The student is an MLP ``64 -> hidden -> C`` initialised from ``generator``.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if not (x_train.shape[0] == y_train.shape[0] == teacher_logits.shape[0]):
        raise ValueError("x_train, y_train and teacher_logits must have the same number of rows")
    n_classes = teacher_logits.shape[1]
    if omit_class is not None:
        if not 0 <= omit_class < n_classes:
            raise ValueError(f"omit_class must be in [0, {n_classes}), got {omit_class}")
        keep = y_train != omit_class
        x_train, y_train, teacher_logits = x_train[keep], y_train[keep], teacher_logits[keep]
    n = x_train.shape[0]
    if n_labels is None:
        labelled_idx = torch.arange(n, device=y_train.device)
    else:
        labelled_idx = stratified_subset(y_train, n_labels, generator)
    student = MLP(x_train.shape[1], hidden, n_classes, generator=generator).to(x_train.device)
    if regime == "scratch":
        train_classifier(student, x_train[labelled_idx], y_train[labelled_idx], epochs=epochs, lr=lr,
                         generator=generator, progress=False, desc="scratch student")
    elif regime == "kd":
        distill(student, x_train[labelled_idx], teacher_logits[labelled_idx], y_train[labelled_idx], rho=rho,
                temperature=temperature, t2_scaling=t2_scaling, epochs=epochs, lr=lr, generator=generator)
    else:
        labelled = torch.zeros(n, dtype=torch.bool, device=x_train.device)
        labelled[labelled_idx] = True
        distill(student, x_train, teacher_logits, y_train, labelled=labelled, rho=rho, temperature=temperature,
                t2_scaling=t2_scaling, epochs=epochs, lr=lr, generator=generator)
    return student
