r"""Linhao Qu, Xiaoyuan Luo, Manning Wang and Zhijian Song. *Bi-directional Weakly Supervised Knowledge Distillation
for Whole Slide Image Classification.* Advances in Neural Information Processing Systems 35, 2022 (WENO). Reproduced
in chapter 9 (``09_weakly_supervised_mil``).

Multiple-instance learning (MIL): a *bag* :math:`X = \{x_1, \dots, x_L\}` of instances (the patches of a whole slide
image) carries one label :math:`Y = \max_i y_i`, and the instance labels :math:`y_i` are never seen. WENO trains two
heads on a shared encoder :math:`h_i = f(x_i)`:

- the *teacher*, an attention-based bag classifier (ABMIL, Ilse et al. 2018; the paper's Eq. 5) with attention logits
  :math:`a_i = w^\top \tanh(V h_i)`, weights :math:`A = \mathrm{softmax}_i(a)` and bag logits
  :math:`W \sum_i A_i h_i + b`, trained on the bag labels;
- the *student*, an instance classifier :math:`p_i = \mathrm{softmax}(g(h_i))`, trained on the teacher's normalised
  attention as a soft pseudo label in positive bags and on 0 in negative bags (Eqs. 12 to 14).

The student's predictions flow back as *hard positive instance mining* (HPM): from a stated epoch on, positive bags
lose the instances the student is already sure of, so the teacher must attend to the harder ones. The paper's bag
prediction is the student's maximum over a bag's instances (Sec. 3.2.3).

Conventions: bags are (B, L, F) tensors of L instances with F features, all bags of one length; bag labels are (B,)
integers in {0, 1}; instance tensors of a bag set are (B, L). A mask is a bool (B, L) tensor, True where an instance is
kept. The paper leaves the pseudo labels' normalisation undefined; both readings are switches
(:func:`attention_pseudo_labels`), and so are the student loss's class weight (:func:`weno_student_loss`) and the HPM
rule (:func:`hard_positive_mask`). Where the authors' released code (github.com/miccaiif/WENO) differs from the
paper, the docstrings say so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from torch import nn

from ..core.data import load_digits
from ..core.models import MLP, initialize_from
from ..core.training import fit
from ..core.validation import (
    check_choice,
    check_finite_tensor,
    check_in_unit_interval,
    check_nonnegative,
    check_positive,
    check_positive_int,
)

__all__ = [
    "HPM_RULES",
    "NORMALISATIONS",
    "SAMPLINGS",
    "ABMILTeacher",
    "DigitBags",
    "Encoder",
    "MILNetwork",
    "WENOSnapshot",
    "attention_pseudo_labels",
    "bag_auc",
    "fit_abmil",
    "fit_weno",
    "hard_positive_mask",
    "instance_auc",
    "make_digit_bags",
    "mil_scores",
    "teacher_bag_loss",
    "weno_student_loss",
]

NORMALISATIONS = ("global", "per_bag")
SAMPLINGS = ("with_replacement", "once")
HPM_RULES = ("threshold", "top_k", "keep_above")
PSEUDO_LABEL_CLAMP = 1e-5  # the released code clamps pseudo labels to [1e-5, 1 - 1e-5]
LOG_GUARD = 1e-5  # the released code's log(p + 1e-5) in both losses


# --- Data: bags of digits --------------------------------------------------------------------------------------------

@dataclass
class DigitBags:
    """Bags of scikit-learn digits for MIL, as made by :func:`make_digit_bags`.

    Parameters
    ----------
    x_train, x_test : torch.Tensor
        (B, L, 64) standardised pixels (statistics of the training instances).
    bag_labels_train, bag_labels_test : torch.Tensor
        (B,) int64 bag labels, 1 if the bag holds a positive instance.
    instance_labels_train, instance_labels_test : torch.Tensor
        (B, L) int64 instance labels, 1 for the positive digit; never used in training.
    digits_train, digits_test : torch.Tensor
        (B, L) int64 digit of each instance (0 to 9).
    positive_digit : int
        The digit that makes an instance positive.
    n_positives : int
        Positive instances in each positive bag.
    """

    x_train: torch.Tensor
    bag_labels_train: torch.Tensor
    instance_labels_train: torch.Tensor
    digits_train: torch.Tensor
    x_test: torch.Tensor
    bag_labels_test: torch.Tensor
    instance_labels_test: torch.Tensor
    digits_test: torch.Tensor
    positive_digit: int
    n_positives: int

    @property
    def bag_size(self) -> int:
        """L, the number of instances in a bag."""
        return int(self.x_train.shape[1])


def _draw_bags(x, y, n_bags, bag_size, n_positives, positive_digit, sampling, generator):
    """Bags from one split's instances: the first half of the bag indices positive, then shuffled."""
    positives = torch.nonzero(y == positive_digit).flatten()
    negatives = torch.nonzero(y != positive_digit).flatten()
    n_positive_bags = n_bags // 2
    need_pos = n_positives * n_positive_bags
    need_neg = (bag_size - n_positives) * n_positive_bags + bag_size * (n_bags - n_positive_bags)
    if sampling == "once" and (need_pos > len(positives) or need_neg > len(negatives)):
        raise ValueError(
            f"sampling='once' uses each instance at most once, but {n_bags} bags need {need_pos} positive and "
            f"{need_neg} negative instances, and this split has {len(positives)} and {len(negatives)}: use fewer "
            "bags, a smaller bag_size or sampling='with_replacement'")
    if n_positives > len(positives) or bag_size > len(negatives):
        raise ValueError(f"a bag needs up to {n_positives} distinct positive and {bag_size} distinct negative "
                         f"instances; this split has {len(positives)} and {len(negatives)}")
    if sampling == "once":
        pos_order = positives[torch.randperm(len(positives), generator=generator)]
        neg_order = negatives[torch.randperm(len(negatives), generator=generator)]
    rows, pos_used, neg_used = [], 0, 0
    for b in range(n_bags):
        k = n_positives if b < n_positive_bags else 0
        if sampling == "once":
            chosen = torch.cat([pos_order[pos_used:pos_used + k], neg_order[neg_used:neg_used + bag_size - k]])
            pos_used, neg_used = pos_used + k, neg_used + bag_size - k
        else:  # distinct within a bag, reused across bags
            chosen = torch.cat([positives[torch.randperm(len(positives), generator=generator)[:k]],
                                negatives[torch.randperm(len(negatives), generator=generator)[:bag_size - k]]])
        rows.append(chosen[torch.randperm(bag_size, generator=generator)])  # positives at random places
    index = torch.stack(rows)[torch.randperm(n_bags, generator=generator)]
    digits = y[index]
    instance_labels = (digits == positive_digit).long()
    return x[index], instance_labels.amax(1), instance_labels, digits


def make_digit_bags(
    positive_digit: int = 9,
    bag_size: int = 20,
    positive_ratio: float = 0.3,
    n_bags: tuple[int, int] = (200, 200),
    sampling: str = "with_replacement",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> DigitBags:
    r"""Bags of 8x8 digits, positive when they hold the digit ``positive_digit``: a MIL toy with instance labels.

    The 1797 digits are split 60/40, stratified, before any bag is made (:func:`kdnb.core.data.load_digits` with
    ``test_size=0.4``), so no test bag shares an instance with a training bag. In each split, half the bags
    (``n // 2``) are positive and hold exactly :math:`k = \lfloor r L + \tfrac12 \rfloor` positive instances at random
    places among :math:`L - k` negatives (any other digit); the other bags hold :math:`L` negatives. The paper's
    CIFAR-10-MIL builds its bags the same way from a positive class.

    Parameters
    ----------
    positive_digit : int, default 9
        The positive class, in 0 to 9.
    bag_size : int, default 20
        L, instances per bag, >= 1.
    positive_ratio : float, default 0.3
        r, the fraction of positive instances in a positive bag, in (0, 1], with :math:`r L \ge 1/2` so that
        :math:`k \ge 1`.
    n_bags : tuple of two int, default (200, 200)
        Training and test bags, each >= 2.
    sampling : {"with_replacement", "once"}, default "with_replacement"
        ``"with_replacement"``: instances are distinct within a bag but reused across bags (a deviation: the digits
        have only about 108 nines for training); ``"once"``: each instance is used at most once, as in the released
        code's CIFAR-10-MIL, which raises when the split has too few instances.
    seed : int, default 0
        Seed of the split and of the bags (the same seed gives the same bags).
    device : torch.device or str, default "cpu"
        Device of the returned tensors.

    Returns
    -------
    DigitBags
        The training and test bags with their bag, instance and digit labels.

    Raises
    ------
    ValueError
        If a number is out of its range (with :math:`r L < 1/2` named), ``sampling`` is unknown, or the split has
        too few instances for the bags.
    TypeError
        If an int argument is not an int or ``n_bags`` is not a pair.
    """
    if isinstance(positive_digit, bool) or not isinstance(positive_digit, Integral):
        raise TypeError(f"positive_digit must be an int, got {type(positive_digit).__name__}")
    if not 0 <= positive_digit <= 9:
        raise ValueError(f"positive_digit must be a digit in 0 to 9, got {positive_digit}")
    bag_size = check_positive_int(bag_size, "bag_size")
    positive_ratio = check_in_unit_interval(positive_ratio, "positive_ratio", open_low=True)
    n_positives = math.floor(positive_ratio * bag_size + 0.5)
    if n_positives < 1:
        raise ValueError(f"positive_ratio * bag_size must be >= 1/2 so that a positive bag holds a positive instance, "
                         f"got {positive_ratio} * {bag_size} = {positive_ratio * bag_size:g}")
    if not isinstance(n_bags, (tuple, list)) or len(n_bags) != 2:
        raise TypeError(f"n_bags must be a pair (training bags, test bags), got {n_bags!r}")
    n_train, n_test = (check_positive_int(n, "n_bags", minimum=2) for n in n_bags)
    check_choice(sampling, "sampling", SAMPLINGS)
    digits = load_digits(test_size=0.4, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train = _draw_bags(digits.x_train, digits.y_train, n_train, bag_size, n_positives, positive_digit, sampling,
                       generator)
    test = _draw_bags(digits.x_test, digits.y_test, n_test, bag_size, n_positives, positive_digit, sampling, generator)
    train, test = ([t.to(device) for t in part] for part in (train, test))
    return DigitBags(*train, *test, positive_digit=positive_digit, n_positives=n_positives)


# --- Models ----------------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """The shared instance encoder f: one linear layer and a ReLU, applied to every instance.

    Parameters
    ----------
    in_features : int, default 64
        F, features of an instance, >= 1.
    width : int, default 64
        d, features of an encoding, >= 1.
    generator : torch.Generator, optional
        Generator of the initial weights (:func:`kdnb.core.models.initialize_from`).

    Raises
    ------
    ValueError
        If a size is < 1.
    """

    def __init__(self, in_features: int = 64, width: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(check_positive_int(in_features, "in_features"),
                                           check_positive_int(width, "width")), nn.ReLU())
        self.width = width
        if generator is not None:
            initialize_from(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode instances.

        Parameters
        ----------
        x : torch.Tensor
            (..., F) instances.

        Returns
        -------
        torch.Tensor
            (..., d) encodings.
        """
        return self.net(x)


class ABMILTeacher(nn.Module):
    r"""The attention-based MIL teacher head of the paper's Eq. 5 (non-gated ABMIL, Ilse et al. 2018).

    :math:`a_i = w^\top \tanh(V h_i)`, :math:`A = \mathrm{softmax}_i(a)` over a bag's kept instances, bag logits
    :math:`W \sum_i A_i h_i + b`. A masked-out instance gets the logit :math:`-\infty`, so weight 0, and the others'
    weights are those of the bag without it.

    Parameters
    ----------
    width : int, default 64
        d, the encoding size, >= 1.
    attention_width : int, default 32
        Rows of V, >= 1.
    n_classes : int, default 2
        Bag classes.
    generator : torch.Generator, optional
        Generator of the initial weights.

    Raises
    ------
    ValueError
        If a size is < 1.
    """

    def __init__(self, width: int = 64, attention_width: int = 32, n_classes: int = 2,
                 generator: torch.Generator | None = None):
        super().__init__()
        width = check_positive_int(width, "width")
        self.attention = nn.Sequential(nn.Linear(width, check_positive_int(attention_width, "attention_width")),
                                       nn.Tanh(), nn.Linear(attention_width, 1))
        self.classifier = nn.Linear(width, check_positive_int(n_classes, "n_classes"))
        if generator is not None:
            initialize_from(self, generator)

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The pre-softmax attention logits a, each instance's alone.

        Parameters
        ----------
        h : torch.Tensor
            (B, L, d) encodings.

        Returns
        -------
        torch.Tensor
            (B, L) logits.
        """
        return self.attention(h).squeeze(-1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None):
        """Bag logits, attention weights and attention logits of a batch of bags.

        Parameters
        ----------
        h : torch.Tensor
            (B, L, d) encodings.
        mask : torch.Tensor, optional
            (B, L) bool, True where an instance is kept; every bag must keep one.

        Returns
        -------
        tuple of torch.Tensor
            (B, n_classes) bag logits, (B, L) attention weights A (0 where masked, summing to 1 per bag) and (B, L)
            attention logits a before the mask.

        Raises
        ------
        ValueError
            If ``h`` is not 3-d, or ``mask`` has another shape, is not bool or empties a bag.
        """
        if h.ndim != 3:
            raise ValueError(f"h must be (B, L, d) encodings, got shape {tuple(h.shape)}")
        logits = self.attention_logits(h)
        scores = logits
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != logits.shape:
                raise ValueError(f"mask must be a bool tensor of shape {tuple(logits.shape)}")
            if not bool(mask.any(1).all()):
                raise ValueError("mask must keep at least one instance of every bag")
            scores = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return self.classifier((weights.unsqueeze(-1) * h).sum(1)), weights, logits


class MILNetwork(nn.Module):
    """WENO's three parts: a shared :class:`Encoder`, an :class:`ABMILTeacher` head and a student head.

    The student head is ``kdnb.core.models.MLP(width, student_hidden, 2)`` on the encodings. ABMIL alone is this
    network without training its student.

    Parameters
    ----------
    in_features : int, default 64
        F, features of an instance.
    width : int, default 64
        d, encoding size.
    attention_width : int, default 32
        Rows of the attention's V.
    student_hidden : tuple of int, default (32,)
        Hidden widths of the student head.
    generator : torch.Generator, optional
        Generator of every initial weight (encoder, teacher, student in that order).
    """

    def __init__(self, in_features: int = 64, width: int = 64, attention_width: int = 32,
                 student_hidden: tuple[int, ...] = (32,), generator: torch.Generator | None = None):
        super().__init__()
        self.encoder = Encoder(in_features, width, generator=generator)
        self.teacher = ABMILTeacher(width, attention_width, 2, generator=generator)
        self.student = MLP(width, student_hidden, 2, generator=generator)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's bag logits (the output :func:`fit_abmil` trains).

        Parameters
        ----------
        bags : torch.Tensor
            (B, L, F) bags.
        mask : torch.Tensor, optional
            (B, L) bool, True where an instance is kept (:meth:`ABMILTeacher.forward`).

        Returns
        -------
        torch.Tensor
            (B, 2) bag logits.
        """
        return self.teacher(self.encoder(bags), mask)[0]

    def student_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The student head's logits (the MLP sees the encodings flattened to (N, d)).

        Parameters
        ----------
        h : torch.Tensor
            (..., d) encodings.

        Returns
        -------
        torch.Tensor
            (..., 2) logits.
        """
        return self.student(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], 2)

    def instance_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits of raw instances (encoder, then student head).

        Parameters
        ----------
        x : torch.Tensor
            (..., F) instances.

        Returns
        -------
        torch.Tensor
            (..., 2) logits.
        """
        return self.student_logits(self.encoder(x))


# --- Pseudo labels and losses ----------------------------------------------------------------------------------------

def _check_bag_labels(bag_labels, batch: int, name: str = "bag_labels") -> torch.Tensor:
    if not isinstance(bag_labels, torch.Tensor) or bag_labels.shape != (batch,):
        raise ValueError(f"{name} must be a ({batch},) tensor of 0s and 1s, got "
                         f"{getattr(bag_labels, 'shape', type(bag_labels).__name__)}")
    if not bool(((bag_labels == 0) | (bag_labels == 1)).all()):
        raise ValueError(f"{name} must hold 0s and 1s only")
    return bag_labels.bool()


def attention_pseudo_labels(
    attention_logits: torch.Tensor,
    bag_labels: torch.Tensor,
    a_min: float | None = None,
    a_max: float | None = None,
    normalisation: str = "global",
) -> torch.Tensor:
    r"""WENO's soft instance pseudo labels from the teacher's attention (the paper's Eq. 12).

    :math:`\hat y_i = 0` for every instance of a negative bag. In a positive bag, :math:`\hat y_i` is a min-max
    normalised attention score, clamped to :math:`[10^{-5}, 1 - 10^{-5}]`. The paper's norm(·) is not defined, so
    both readings are offered and neither is called the paper's:

    - ``"global"`` (the released code's ``norm_AttnScore2Prob``): :math:`(a_i - a_{\min})/(a_{\max} - a_{\min})` on
      the pre-softmax logits, with :math:`a_{\min}, a_{\max}` over all training instances of the last teacher pass;
    - ``"per_bag"``: the min-max of the softmax weights :math:`A_i` within each bag. The softmax denominator cancels,
      so this is the min-max of :math:`e^{a_i}`, not of :math:`a_i`. A bag whose weights are all equal carries no
      ranking and gets 1/2 everywhere.

    Parameters
    ----------
    attention_logits : torch.Tensor
        (B, L) pre-softmax attention logits a.
    bag_labels : torch.Tensor
        (B,) bag labels in {0, 1}.
    a_min, a_max : float, optional
        The global range, ``a_max > a_min``; required by ``"global"``, ignored by ``"per_bag"``.
    normalisation : {"global", "per_bag"}, default "global"

    Returns
    -------
    torch.Tensor
        (B, L) pseudo labels, detached: 0 in negative bags, in :math:`[10^{-5}, 1 - 10^{-5}]` in positive bags,
        non-decreasing in :math:`a_i` within a bag.

    Raises
    ------
    ValueError
        If the shapes do not match, a label is not 0 or 1, the logits are not finite, the normalisation is unknown,
        or ``"global"`` lacks a range or has ``a_max <= a_min``.
    """
    check_choice(normalisation, "normalisation", NORMALISATIONS)
    a = check_finite_tensor(attention_logits, "attention_logits").detach()
    if a.ndim != 2:
        raise ValueError(f"attention_logits must be (B, L), got shape {tuple(a.shape)}")
    positive = _check_bag_labels(bag_labels, a.shape[0])
    if normalisation == "global":
        if a_min is None or a_max is None:
            raise ValueError("normalisation='global' needs a_min and a_max (the last teacher pass's range)")
        a_min, a_max = float(a_min), float(a_max)
        if not (math.isfinite(a_min) and math.isfinite(a_max)) or a_max <= a_min:
            raise ValueError(f"a_max must be finite and greater than a_min, got a_min={a_min}, a_max={a_max}")
        scores = (a - a_min) / (a_max - a_min)
    else:
        weights = torch.softmax(a, dim=1)
        low, high = weights.amin(1, keepdim=True), weights.amax(1, keepdim=True)
        spread = high - low
        scores = torch.where(spread > 0, (weights - low) / spread.clamp_min(torch.finfo(a.dtype).tiny),
                             torch.full_like(weights, 0.5))
    scores = scores.clamp(PSEUDO_LABEL_CLAMP, 1 - PSEUDO_LABEL_CLAMP)
    return torch.where(positive[:, None], scores, torch.zeros_like(scores))


def weno_student_loss(student_logits: torch.Tensor, pseudo_labels: torch.Tensor, w_neg: float = 0.5,
                      eps: float = LOG_GUARD) -> torch.Tensor:
    r"""WENO's student loss: a class-weighted soft cross-entropy on the pseudo labels (the paper's Eq. 14).

    .. math:: L_S = -\frac1N \sum_{i=1}^{N} \big[w_n (1 - \hat y_i) \log(p_{i0} + \epsilon)
              + (1 - w_n)\, \hat y_i \log(p_{i1} + \epsilon)\big], \qquad p_i = \mathrm{softmax}(z_i).

    The paper writes a plain cross-entropy: that is ``w_neg=0.5``, half of it (a step-size factor). The released
    scripts use ``w_neg=0.1`` (``stu_loss_weight_neg``; 0.2 in one) and ``eps=1e-5``; ``eps=0`` takes the log-softmax, exact.

    Parameters
    ----------
    student_logits : torch.Tensor
        (N, 2) student logits.
    pseudo_labels : torch.Tensor
        (N,) soft labels in [0, 1], the probability that an instance is positive.
    w_neg : float, default 0.5
        Weight of the negative class, in [0, 1].
    eps : float, default 1e-5
        Guard inside the logarithm, >= 0.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    ValueError
        If the shapes do not match, a pseudo label is outside [0, 1], or ``w_neg`` or ``eps`` is out of range.
    """
    w_neg = check_in_unit_interval(w_neg, "w_neg")
    eps = check_nonnegative(eps, "eps")
    if not isinstance(student_logits, torch.Tensor) or student_logits.ndim != 2 or student_logits.shape[1] != 2:
        raise ValueError(f"student_logits must be (N, 2), got {getattr(student_logits, 'shape', None)}")
    y = check_finite_tensor(pseudo_labels, "pseudo_labels")
    if y.shape != student_logits.shape[:1]:
        raise ValueError(f"pseudo_labels must be ({student_logits.shape[0]},), got shape {tuple(y.shape)}")
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError("pseudo_labels must lie in [0, 1]")
    return _student_loss(student_logits, y, w_neg, eps)


def _student_loss(student_logits, pseudo_labels, w_neg, eps):
    """:func:`weno_student_loss` on checked inputs (the training loop's inner step)."""
    if eps == 0:
        log_p = torch.log_softmax(student_logits, dim=1)
    else:
        log_p = torch.log(torch.softmax(student_logits, dim=1) + eps)
    return -(w_neg * (1 - pseudo_labels) * log_p[:, 0] + (1 - w_neg) * pseudo_labels * log_p[:, 1]).mean()


def teacher_bag_loss(bag_logits: torch.Tensor, bag_labels: torch.Tensor, eps: float = LOG_GUARD) -> torch.Tensor:
    r"""The teacher's bag cross-entropy (the paper's Eq. 11), as the released code writes it.

    :math:`L_T = -\frac1B \sum_b \big[Y_b \log(P_b + \epsilon) + (1 - Y_b) \log(1 - P_b + \epsilon)\big]` with
    :math:`P_b = \mathrm{softmax}(z_b)_1`. ``eps=0`` is the exact two-class cross-entropy.

    Parameters
    ----------
    bag_logits : torch.Tensor
        (B, 2) bag logits.
    bag_labels : torch.Tensor
        (B,) bag labels in {0, 1}.
    eps : float, default 1e-5
        Guard inside the logarithm, >= 0.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    ValueError
        If the shapes do not match, a label is not 0 or 1, or ``eps`` < 0.
    """
    eps = check_nonnegative(eps, "eps")
    if not isinstance(bag_logits, torch.Tensor) or bag_logits.ndim != 2 or bag_logits.shape[1] != 2:
        raise ValueError(f"bag_logits must be (B, 2), got {getattr(bag_logits, 'shape', None)}")
    _check_bag_labels(bag_labels, bag_logits.shape[0])
    return _teacher_loss(bag_logits, bag_labels, eps)


def _teacher_loss(bag_logits, bag_labels, eps):
    """:func:`teacher_bag_loss` on checked inputs (the training loop's inner step)."""
    if eps == 0:
        return nn.functional.cross_entropy(bag_logits, bag_labels.long())
    y = bag_labels.to(bag_logits.dtype)
    p = torch.softmax(bag_logits, dim=1)[:, 1]
    return -(y * torch.log(p + eps) + (1 - y) * torch.log(1 - p + eps)).mean()


def hard_positive_mask(p1: torch.Tensor, bag_labels: torch.Tensor, rule: str = "threshold", threshold: float = 0.99,
                       top_k: int | None = None) -> torch.Tensor:
    r"""Which instances the teacher sees under hard positive instance mining (HPM; the paper's Sec. 3.3).

    Negative bags keep every instance. In a positive bag, from the student's positive probabilities :math:`p_{i1}`:

    - ``"threshold"`` keeps :math:`p_{i1} \le \tau`: the instances the student is already sure are positive are
      hidden, so the teacher must attend to the harder ones (the paper's hard-positive mining);
    - ``"top_k"`` keeps the ``top_k`` instances of lowest :math:`p_{i1}` (the released code's ``_Top{K}``);
    - ``"keep_above"`` keeps :math:`p_{i1} \ge \tau`, which hides the instances the student calls negative (it
      filters negatives rather than mining hard positives): a branch of some of the released scripts that their
      settings leave unused. The scripts that mine with ``ThreProb50`` keep :math:`p_{i1} \le 0.5`, the
      ``"threshold"`` rule.

    A threshold rule that would empty a bag keeps its single instance of highest :math:`p_{i1}` instead, so no bag
    is ever empty.

    Parameters
    ----------
    p1 : torch.Tensor
        (B, L) the student's probabilities that each instance is positive, in [0, 1].
    bag_labels : torch.Tensor
        (B,) bag labels in {0, 1}.
    rule : {"threshold", "top_k", "keep_above"}, default "threshold"
    threshold : float, default 0.99
        τ, in (0, 1]; used by the two threshold rules.
    top_k : int, optional
        Instances kept by ``"top_k"``, in [1, L]; required by it.

    Returns
    -------
    torch.Tensor
        (B, L) bool mask, True where an instance is kept; every bag keeps at least one.

    Raises
    ------
    ValueError
        If the shapes do not match, ``p1`` leaves [0, 1], ``rule`` is unknown, ``threshold`` is outside (0, 1], or
        ``top_k`` is missing or outside [1, L].
    """
    check_choice(rule, "rule", HPM_RULES)
    p1 = check_finite_tensor(p1, "p1").detach()
    if p1.ndim != 2:
        raise ValueError(f"p1 must be (B, L), got shape {tuple(p1.shape)}")
    if bool(((p1 < 0) | (p1 > 1)).any()):
        raise ValueError("p1 must hold probabilities in [0, 1]")
    positive = _check_bag_labels(bag_labels, p1.shape[0])
    threshold = check_in_unit_interval(threshold, "threshold", open_low=True)
    length = p1.shape[1]
    if rule == "top_k":
        if top_k is None:
            raise ValueError("rule='top_k' needs top_k, the number of instances kept per positive bag")
        top_k = check_positive_int(top_k, "top_k")
        if top_k > length:
            raise ValueError(f"top_k must be in [1, L] = [1, {length}], got {top_k}")
        keep = torch.zeros_like(p1, dtype=torch.bool)
        keep.scatter_(1, torch.topk(-p1, top_k, dim=1).indices, True)
    else:
        keep = p1 <= threshold if rule == "threshold" else p1 >= threshold
        empty = ~keep.any(1)
        if bool(empty.any()):
            keep[empty] = nn.functional.one_hot(p1[empty].argmax(1), length).bool()
    return torch.where(positive[:, None], keep, torch.ones_like(keep))


# --- Training --------------------------------------------------------------------------------------------------------

def _check_bags(bags, bag_labels):
    if not isinstance(bags, torch.Tensor) or bags.ndim != 3:
        raise ValueError(f"bags must be a (B, L, F) tensor, got {getattr(bags, 'shape', type(bags).__name__)}")
    _check_bag_labels(bag_labels, bags.shape[0])


def _optimiser(kind, params, lr, weight_decay):
    # foreach: one multi-tensor update per step; the per-tensor loop costs more than the update on these small heads
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, foreach=True)


def fit_abmil(network: MILNetwork, bags: torch.Tensor, bag_labels: torch.Tensor, *, epochs: int,
              generator: torch.Generator, lr: float = 1e-2, optimizer: str = "adam", weight_decay: float = 1e-4,
              bag_batch: int = 8):
    """Train the ABMIL baseline: encoder and teacher on the bag labels alone, one ``kdnb.core.training.fit`` call.

    Parameters
    ----------
    network : MILNetwork
        Trained in place; its student head is left untouched.
    bags, bag_labels : torch.Tensor
        (B, L, F) training bags and (B,) labels.
    epochs : int
        Passes over the bags.
    generator : torch.Generator
        Shuffles the bags.
    lr, optimizer, weight_decay
        As in :func:`kdnb.core.training.fit` (``"adam"`` or plain ``"sgd"``).
    bag_batch : int, default 8
        Bags a step (a deviation: the paper takes one bag a step; equal-length bags batch exactly).

    Returns
    -------
    kdnb.core.training.History
        The mean bag loss of each epoch.
    """
    _check_bags(bags, bag_labels)
    return fit(network, teacher_bag_loss, bags, [bag_labels], epochs=epochs, generator=generator, lr=lr,
               optimizer=optimizer, weight_decay=weight_decay, batch_size=bag_batch, progress=False,
               params=[*network.encoder.parameters(), *network.teacher.parameters()])


def fit_weno(network: MILNetwork, bags: torch.Tensor, bag_labels: torch.Tensor, *, epochs: int,
             generator: torch.Generator, lr: float = 1e-2, optimizer: str = "adam", weight_decay: float = 1e-4,
             bag_batch: int = 8, instance_batch: int = 256, w_neg: float = 0.5, normalisation: str = "global",
             mining_start: int | None = None, rule: str = "threshold", threshold: float = 0.99,
             top_k: int | None = None, evaluate=None, snapshot_at: int | None = None,
             resume: WENOSnapshot | None = None) -> dict[str, list]:
    r"""Train WENO: every epoch a teacher phase over bags, then a student phase over instances (the paper's Fig. 2).

    Teacher phase: the bags are shuffled and each batch of ``bag_batch`` bags takes a step of the teacher loss
    (:func:`teacher_bag_loss`) on encoder and teacher head. From epoch ``mining_start`` on (1-based), positive bags
    are masked by :func:`hard_positive_mask` on the student's current predictions. The attention logits of this pass
    give the range :math:`a_{\min}, a_{\max}` of the ``"global"`` pseudo labels, as in the released code (which,
    under mining, takes it over the kept instances only; here every instance's logit counts).
    Student phase: the pseudo labels of every training instance are computed once, without gradients, from the
    current teacher (:func:`attention_pseudo_labels`); the instances are shuffled across bags and each batch of
    ``instance_batch`` takes a step of :func:`weno_student_loss` on encoder and student head. The released code
    recomputes them batch by batch as the encoder moves; once per phase is the book's choice, and the only one that
    serves the per-bag normalisation.

    As in the released code there is one optimiser per part (encoder, teacher head, student head); the encoder's
    state persists across both phases, which is why this is a loop of its own and not two ``fit`` calls a phase.

    Parameters
    ----------
    network : MILNetwork
        Trained in place.
    bags, bag_labels : torch.Tensor
        (B, L, F) training bags and (B,) bag labels; instance labels are never used.
    epochs : int
        Epochs, >= 1.
    generator : torch.Generator
        CPU generator of every shuffle.
    lr : float, default 1e-2
        Learning rate of all three optimisers.
    optimizer : {"adam", "sgd"}, default "adam"
        Adam, or plain SGD as in the paper (lr 1e-3 there).
    weight_decay : float, default 1e-4
    bag_batch : int, default 8
        Bags a teacher step (the paper: 1).
    instance_batch : int, default 256
        Instances a student step.
    w_neg : float, default 0.5
        The student loss's negative weight (:func:`weno_student_loss`).
    normalisation : {"global", "per_bag"}, default "global"
        Of the pseudo labels.
    mining_start : int, optional
        First epoch with HPM, in [1, epochs]; None: no mining.
    rule, threshold, top_k
        Of :func:`hard_positive_mask`.
    evaluate : callable, optional
        ``evaluate(network) -> {name: value}`` after every epoch, in eval mode without gradients.
    snapshot_at : int, optional
        Keep a :class:`WENOSnapshot` of the run after this epoch, in [1, epochs], as ``history["snapshot"]``.
    resume : WENOSnapshot, optional
        Continue a run from its snapshot: ``network`` (of the same layout) is loaded with the snapshot's weights,
        the optimisers with their states and ``generator`` with its state, and training goes on from the next epoch
        to ``epochs``. The other arguments may differ from the first run's (a later ``mining_start``, say); with the
        same ones the result is the uninterrupted run's, bit for bit. Runs that share their first epochs (WENO and
        WENO+HPM before mining starts) are trained once this way.

    Returns
    -------
    dict
        ``"teacher_loss"`` and ``"student_loss"`` (mean of each epoch), ``"kept_fraction"`` (mean fraction of a
        positive bag's instances the teacher saw), one list per evaluated metric (a resumed run's lists start with
        the snapshot's), and ``"snapshot"`` when ``snapshot_at`` is given.

    Raises
    ------
    ValueError, TypeError
        If an argument is out of its range or of the wrong type.
    """
    _check_bags(bags, bag_labels)
    epochs = check_positive_int(epochs, "epochs")
    lr = check_positive(lr, "lr")
    check_choice(optimizer, "optimizer", ("adam", "sgd"))
    weight_decay = check_nonnegative(weight_decay, "weight_decay")
    bag_batch = check_positive_int(bag_batch, "bag_batch")
    instance_batch = check_positive_int(instance_batch, "instance_batch")
    check_in_unit_interval(w_neg, "w_neg")
    check_choice(normalisation, "normalisation", NORMALISATIONS)
    if mining_start is not None:
        mining_start = check_positive_int(mining_start, "mining_start")
        if mining_start > epochs:
            raise ValueError(f"mining_start must be in [1, epochs] = [1, {epochs}] or None, got {mining_start}")
        hard_positive_mask(torch.zeros(1, bags.shape[1]), torch.ones(1, dtype=torch.long), rule, threshold, top_k)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if snapshot_at is not None:
        snapshot_at = check_positive_int(snapshot_at, "snapshot_at")
        if snapshot_at > epochs:
            raise ValueError(f"snapshot_at must be in [1, epochs] = [1, {epochs}] or None, got {snapshot_at}")
    if resume is not None and not isinstance(resume, WENOSnapshot):
        raise TypeError(f"resume must be a WENOSnapshot (history['snapshot'] of an earlier run), got "
                        f"{type(resume).__name__}")
    if resume is not None and not resume.epoch <= epochs:
        raise ValueError(f"epochs must be at least the snapshot's epoch {resume.epoch}, got {epochs}")

    optimisers = [_optimiser(optimizer, part.parameters(), lr, weight_decay)
                  for part in (network.encoder, network.teacher, network.student)]
    encoder_opt, teacher_opt, student_opt = optimisers
    history: dict[str, list] = {"teacher_loss": [], "student_loss": [], "kept_fraction": []}
    first = 1
    if resume is not None:
        network.load_state_dict(resume.network)
        for opt, state in zip(optimisers, resume.optimisers):
            opt.load_state_dict(copy.deepcopy(state))
        generator.set_state(resume.generator.clone())
        history = {k: list(v) for k, v in resume.history.items()}
        first = resume.epoch + 1
    n_bags, length = bags.shape[:2]
    instances = bags.reshape(n_bags * length, -1)
    positive = bag_labels.bool()
    for epoch in range(first, epochs + 1):
        network.train()
        mining = mining_start is not None and epoch >= mining_start
        order = torch.randperm(n_bags, generator=generator).to(bags.device)
        total, low, high, kept = 0.0, math.inf, -math.inf, []
        for start in range(0, n_bags, bag_batch):
            idx = order[start:start + bag_batch]
            h = network.encoder(bags[idx])
            mask = None
            if mining:
                with torch.no_grad():
                    p1 = torch.softmax(network.student_logits(h), dim=-1)[..., 1]
                mask = hard_positive_mask(p1, bag_labels[idx], rule, threshold, top_k)
                if bool(positive[idx].any()):
                    kept.append(float(mask[positive[idx]].float().mean()))
            bag_logits, _, logits = network.teacher(h, mask)
            loss = _teacher_loss(bag_logits, bag_labels[idx], LOG_GUARD)
            encoder_opt.zero_grad(set_to_none=True)
            teacher_opt.zero_grad(set_to_none=True)
            loss.backward()
            encoder_opt.step()
            teacher_opt.step()
            total += float(loss.detach()) * len(idx)
            low, high = min(low, float(logits.detach().min())), max(high, float(logits.detach().max()))
        history["teacher_loss"].append(total / n_bags)
        history["kept_fraction"].append(float(np.mean(kept)) if kept else 1.0)

        with torch.no_grad():
            attention = network.teacher.attention_logits(network.encoder(bags))
            if high <= low:  # a constant attention pass: nothing to rank, every positive-bag label 1/2
                low, high = low - 1.0, high + 1.0
            targets = attention_pseudo_labels(attention, bag_labels, low, high, normalisation).reshape(-1)
        order = torch.randperm(len(instances), generator=generator).to(bags.device)
        total = 0.0
        for start in range(0, len(instances), instance_batch):
            idx = order[start:start + instance_batch]
            loss = _student_loss(network.instance_logits(instances[idx]), targets[idx], w_neg, LOG_GUARD)
            encoder_opt.zero_grad(set_to_none=True)
            student_opt.zero_grad(set_to_none=True)
            loss.backward()
            encoder_opt.step()
            student_opt.step()
            total += float(loss.detach()) * len(idx)
        history["student_loss"].append(total / len(instances))
        if evaluate is not None:
            network.eval()
            with torch.no_grad():
                for name, value in evaluate(network).items():
                    history.setdefault(name, []).append(float(value))
        if epoch == snapshot_at:
            snapshot = WENOSnapshot(epoch, copy.deepcopy(network.state_dict()),
                                    [copy.deepcopy(opt.state_dict()) for opt in optimisers],
                                    generator.get_state(), {k: list(v) for k, v in history.items()})
    network.eval()
    if snapshot_at is not None:
        history["snapshot"] = snapshot
    return history


@dataclass(frozen=True)
class WENOSnapshot:
    """A :func:`fit_weno` run after one of its epochs, to continue it with ``fit_weno(..., resume=snapshot)``.

    Parameters
    ----------
    epoch : int
        The last epoch trained.
    network : dict
        The network's ``state_dict`` (a copy).
    optimisers : list of dict
        The ``state_dict`` of the encoder's, the teacher's and the student's optimisers (copies).
    generator : torch.Tensor
        The shuffling generator's state (``torch.Generator.get_state``).
    history : dict
        The history lists up to ``epoch``.
    """

    epoch: int
    network: dict
    optimisers: list
    generator: torch.Tensor
    history: dict


# --- Evaluation ------------------------------------------------------------------------------------------------------

def mil_scores(network: MILNetwork, bags: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every score the chapter evaluates, in eval mode without gradients.

    Parameters
    ----------
    network : MILNetwork
    bags : torch.Tensor
        (B, L, F) bags.

    Returns
    -------
    dict of torch.Tensor
        ``"teacher_bag"`` (B,) the teacher's bag probability; ``"attention"`` (B, L) its attention logits (the
        instance score of ABMIL; an AUC is unchanged by the code's global min-max); ``"student"`` (B, L) the
        student's positive probability; ``"student_bag"`` (B,) its maximum over each bag (the paper's bag
        prediction, Sec. 3.2.3).
    """
    if not isinstance(bags, torch.Tensor) or bags.ndim != 3:
        raise ValueError(f"bags must be a (B, L, F) tensor, got {getattr(bags, 'shape', None)}")
    was_training = network.training
    network.eval()
    with torch.no_grad():
        h = network.encoder(bags)
        bag_logits, _, attention = network.teacher(h)
        student = torch.softmax(network.student_logits(h), dim=-1)[..., 1]
    network.train(was_training)
    return {"teacher_bag": torch.softmax(bag_logits, dim=1)[:, 1], "attention": attention, "student": student,
            "student_bag": student.amax(1)}


def _auc(scores, labels, name):
    from sklearn.metrics import roc_auc_score

    s = np.asarray(torch.as_tensor(scores).detach().cpu().reshape(-1), dtype=np.float64)
    y = np.asarray(torch.as_tensor(labels).detach().cpu().reshape(-1))
    if s.shape != y.shape:
        raise ValueError(f"{name}: scores and labels must have the same number of entries, got {s.size} and {y.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores must be finite")
    if len(np.unique(y)) != 2:
        raise ValueError(f"{name}: labels must hold both classes 0 and 1")
    return float(roc_auc_score(y, s))


def instance_auc(scores: torch.Tensor, instance_labels: torch.Tensor) -> float:
    """The ROC AUC of instance scores against the hidden instance labels, over every instance of every bag.

    Parameters
    ----------
    scores, instance_labels : torch.Tensor
        (B, L) (or flat) scores and 0/1 labels.

    Returns
    -------
    float
        ``sklearn.metrics.roc_auc_score``, in [0, 1]; 0.5 is chance.

    Raises
    ------
    ValueError
        If the sizes differ, a score is not finite, or one class is missing.
    """
    return _auc(scores, instance_labels, "instance_auc")


def bag_auc(scores: torch.Tensor, bag_labels: torch.Tensor) -> float:
    """The ROC AUC of bag scores against the bag labels.

    Parameters
    ----------
    scores, bag_labels : torch.Tensor
        (B,) scores and 0/1 labels.

    Returns
    -------
    float
        ``sklearn.metrics.roc_auc_score``, in [0, 1].

    Raises
    ------
    ValueError
        If the sizes differ, a score is not finite, or one class is missing.
    """
    return _auc(scores, bag_labels, "bag_auc")
