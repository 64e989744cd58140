r"""Geoffrey Hinton, Oriol Vinyals and Jeff Dean. *Distilling the Knowledge in a Neural Network.* NIPS 2014 Deep
Learning Workshop, 2015. arXiv:1503.02531. Reproduced in chapter 1 (``01_distillation_basics``).

The experiments of chapter 1: students trained from scratch, by distillation, or by distillation on an unlabelled
transfer set, and what the soft targets carry (class similarities, the size of their gradient with and without the
:math:`T^2` factor). The loss and the training loop are in :mod:`kdnb.core`. A *transfer set* is the set of inputs on
which the student matches the teacher; hard labels may be known for only part of it (``labelled``).
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

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        Shape (N, C) with C >= 2: floating point, finite, of the same shape, dtype and device.
    temperature : float
        T > 0 (finite).
    t2_scaling : bool
        Multiply the soft term by :math:`T^2` (Hinton et al. 2015); False gives the plain soft term.

    Returns
    -------
    float
        The mean over the N examples of the Euclidean norm of the soft term's gradient with respect to the student
        logits (:func:`kdnb.core.losses.kd_loss_gradient` with ``rho=1``).

    Raises
    ------
    TypeError, ValueError
        As :func:`kdnb.core.losses.kd_loss_gradient`, for logits or a temperature out of range.

    References
    ----------
    Hinton, Vinyals & Dean 2015, §2 (the :math:`T^2` factor on the soft term).
    """
    grad = kd_loss_gradient(student_logits, teacher_logits, rho=1.0, temperature=temperature, t2_scaling=t2_scaling)
    return float(grad.norm(dim=1).mean())


@torch.no_grad()
def mean_soft_targets(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, temperature: float,
                      n_classes: int) -> torch.Tensor:
    """The teacher's mean softened distribution over the inputs of each class: the class similarities it carries.

    Parameters
    ----------
    model : torch.nn.Module
        The teacher; evaluated in eval mode, without gradients.
    inputs : torch.Tensor
        Shape (N, ...), on the model's device.
    labels : torch.Tensor
        Shape (N,), class indices in [0, ``n_classes``); every class must occur.
    temperature : float
        T > 0, the softening temperature.
    n_classes : int
        C, the number of classes (the model's outputs).

    Returns
    -------
    torch.Tensor
        (C, C) on the CPU, in the dtype of the model's outputs: row c is the mean of
        :math:`\\mathrm{softmax}(z/T)` over the inputs of class c, so each row sums to 1.

    Raises
    ------
    ValueError
        If a class has no examples among the inputs, or ``temperature`` is out of range.

    References
    ----------
    Hinton, Vinyals & Dean 2015, §1 (soft targets carry the similarity structure of the classes).
    """
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

    The regimes:

    * ``"scratch"``: cross-entropy on the ``n_labels`` labelled examples only (no teacher);
    * ``"kd"``: the KD loss on the same ``n_labels`` examples (the teacher's soft targets on those inputs);
    * ``"transfer"``: the KD loss on every training input (the transfer set), with hard labels on ``n_labels`` only.

    The labelled examples are a class-stratified subset drawn with ``generator`` (all of them for ``n_labels=None``).
    ``omit_class`` removes every example of that class from the training data first (Hinton et al. 2015, §3: a
    student that never sees a 3). The student is an MLP ``d -> hidden -> C`` (``64 -> hidden -> C`` on the 8 x 8
    digits) initialised from ``generator``.

    Parameters
    ----------
    x_train : torch.Tensor
        Training inputs, shape (N, d).
    y_train : torch.Tensor
        Class labels, shape (N,), in [0, C).
    teacher_logits : torch.Tensor
        The teacher's logits on ``x_train``, shape (N, C); C is the number of classes.
    regime : {"scratch", "kd", "transfer"}
        How the student is trained (see above).
    n_labels : int or None
        The number of labelled examples, in [1, N] (after ``omit_class``); ``None``: all of them.
    hidden : tuple of int
        The student's hidden widths, each >= 1.
    rho : float
        Soft ratio in [0, 1] of the KD loss (ignored for ``"scratch"``).
    temperature : float
        T > 0 of the KD loss (ignored for ``"scratch"``).
    epochs : int
        Passes over the data, >= 1.
    generator : torch.Generator
        CPU generator of the labelled subset, the initial weights and the mini-batch order.
    lr : float, default 1e-2
        Learning rate (> 0) of the training loop.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (Hinton et al. 2015).
    omit_class : int or None, default None
        A class in [0, C) whose examples are removed before training; ``None``: keep every class.

    Returns
    -------
    torch.nn.Module
        The trained :class:`kdnb.core.models.MLP`, on the device of ``x_train``.

    Raises
    ------
    ValueError
        If ``regime`` is not one of :data:`REGIMES`, ``x_train``, ``y_train`` and ``teacher_logits`` differ in their
        number of rows, ``omit_class`` is not in [0, C), or a training setting is out of range.

    References
    ----------
    Hinton, Vinyals & Dean 2015, §3 (distillation on MNIST, including the omitted class).
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
