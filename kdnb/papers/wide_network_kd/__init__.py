r"""Guangda Ji and Zhanxing Zhu. *Knowledge Distillation in Wide Neural Networks: Risk Bound, Data Efficiency and
Imperfect Teacher.* Advances in Neural Information Processing Systems 33, 2020. arXiv:2010.10090. Reproduced in
chapters 3, 4 and 5 (``03_transfer_risk_bound``, ``04_data_inefficiency``, ``05_imperfect_teacher``).

Knowledge distillation into an infinitely wide student. A very wide student trains linearly in its weights
(chapter 2), so distillation reduces to kernel regression of the *effective student logits*, and the objects of the
paper's theory become closed forms, computed in float64:

* :mod:`~kdnb.papers.wide_network_kd.effective_logits`: the logit :math:`z_\mathrm{eff}(z_t, y_g)` a wide student
  reaches on a training point, the root of the per-example distillation gradient, and its derivative in the hard
  label's weight;
* :mod:`~kdnb.papers.wide_network_kd.students`: the student's kernel (a two-layer ReLU NTK with a first-layer bias),
  its initial function, wide students for many soft ratios, and the hard-label test of the paper's Fig. 5;
* :mod:`~kdnb.papers.wide_network_kd.geometry`: transfer risk, the accumulative angle distribution
  :math:`p(\beta)` and its bound (Theorem 1), data inefficiency (Definition 1);
* :mod:`~kdnb.papers.wide_network_kd.inefficiency`: per-repeat data inefficiency, the identity that ties it to the
  angle, and the reference levels chapter 4 compares it with;
* :mod:`~kdnb.papers.wide_network_kd.imperfect`: imperfect teachers: the ground-truth logit of the hard-label test,
  paired gains over repeats, and where the hard-label sign switches;
* :mod:`~kdnb.papers.wide_network_kd.experiments`: the experiments of the paper's Figs. 2 to 5, one call each;
* :mod:`~kdnb.papers.wide_network_kd.premise`: the premise tested on finite networks, trained to convergence on the
  distillation loss and compared with the kernel student as the width grows.

**The book's choices.** The book works from the paper's abstract, introduction and figure captions; the following are
the book's reconstruction from them, each an explicit argument: the soft-term constant :math:`c_T` (``t2_scaling``;
every function in kdnb defaults to Hinton's :math:`T^2`, and chapters 3 to 5 pass ``t2_scaling=False``, the plain soft
term, as their stated choice), the definitions of :math:`\Delta w_z`, :math:`\Delta w_*` and :math:`p(\beta)`, and the
forms of Theorem 1 and Definition 1. Zero and oracle weight changes: :math:`\Delta w_z = -\Phi K^{-1} f_0(X)` fits the
zero function, so with ``f0=None`` (the antisymmetric initialisation) every quantity is the one relative to
:math:`\Delta w_z`; the oracle :math:`\Delta w_*` is approximated by the solve on :math:`N_\mathrm{or} \gg n` points, of
which the training points are a prefix (report :math:`N_\mathrm{or}`: for :math:`\rho < 1` the oracle target is
discontinuous and its norm grows with it).
"""

from .effective_logits import effective_logits_hard_derivative, effective_student_logits, root_residual
from .experiments import (
    CircleExample,
    DigitsExample,
    DigitsRun,
    ImperfectTeacherRun,
    StoppedTeacherNorms,
    TransferRiskRun,
    best_rho_table,
    circle_example,
    digits_experiment,
    early_stopped_distillation_norms,
    fitted_slope,
    imperfect_teacher_experiment,
    inefficiency_table,
    poor_teacher_gain,
    target_difficulty_norms,
    transfer_risk_experiment,
)
from .premise import ConvergedTraining, PremiseRun, premise_experiment, student_network, train_to_effective_logits
from .imperfect import GROUND_TRUTH_LOGITS, SignSwitch, ground_truth_logit, held_out_soft_gain, sign_switch
from .geometry import accumulative_angle_distribution, boundary_angles, data_inefficiency, transfer_risk
from .inefficiency import (
    label_smoothing_spread,
    least_favourable,
    log_cosine_sum,
    per_repeat_inefficiency,
    random_label_level,
)
from .students import (
    ARCHITECTURES,
    HardLabelEffect,
    hard_label_effect,
    kernel_diagonal,
    kernel_students,
    sample_initial_function,
    student_kernel,
    student_nngp,
)

__all__ = [
    "ARCHITECTURES",
    "GROUND_TRUTH_LOGITS",
    "CircleExample",
    "ConvergedTraining",
    "DigitsExample",
    "DigitsRun",
    "HardLabelEffect",
    "ImperfectTeacherRun",
    "SignSwitch",
    "PremiseRun",
    "StoppedTeacherNorms",
    "TransferRiskRun",
    "accumulative_angle_distribution",
    "best_rho_table",
    "poor_teacher_gain",
    "premise_experiment",
    "boundary_angles",
    "circle_example",
    "data_inefficiency",
    "digits_experiment",
    "early_stopped_distillation_norms",
    "effective_logits_hard_derivative",
    "effective_student_logits",
    "fitted_slope",
    "ground_truth_logit",
    "held_out_soft_gain",
    "hard_label_effect",
    "imperfect_teacher_experiment",
    "inefficiency_table",
    "kernel_diagonal",
    "kernel_students",
    "label_smoothing_spread",
    "least_favourable",
    "log_cosine_sum",
    "per_repeat_inefficiency",
    "random_label_level",
    "root_residual",
    "sample_initial_function",
    "sign_switch",
    "student_kernel",
    "student_network",
    "student_nngp",
    "target_difficulty_norms",
    "transfer_risk",
    "train_to_effective_logits",
    "transfer_risk_experiment",
]
