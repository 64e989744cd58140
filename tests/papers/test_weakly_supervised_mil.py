"""WENO (Qu et al. 2022): digit-bags, the ABMIL teacher, pseudo labels, the two losses, hard positive mining, the
two training phases and the AUCs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from kdnb.papers import weakly_supervised_mil as mil


def logits_and_labels(seed, bags=6, length=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(bags, length, generator=g, dtype=dtype)
    labels = torch.tensor([1, 0] * (bags // 2))
    return a, labels


# --- digit-bags --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bags():
    return mil.make_digit_bags(positive_ratio=0.3, bag_size=20, n_bags=(40, 30), seed=3)


def test_digit_bags_have_exact_positive_counts_and_labels(bags):
    for x, yb, yi, digits in [(bags.x_train, bags.bag_labels_train, bags.instance_labels_train, bags.digits_train),
                              (bags.x_test, bags.bag_labels_test, bags.instance_labels_test, bags.digits_test)]:
        assert x.shape == (len(yb), 20, 64) and yi.shape == (len(yb), 20)
        counts = yi.sum(1)
        assert set(counts[yb == 1].tolist()) == {6} and set(counts[yb == 0].tolist()) == {0}
        assert int(yb.sum()) == len(yb) // 2
        assert torch.equal(yi, (digits == 9).long()) and torch.equal(yb, yi.amax(1))
    assert bags.n_positives == 6 and bags.bag_size == 20


def test_digit_bags_train_and_test_instances_are_disjoint_and_seeded(bags):
    train = {tuple(r.tolist()) for r in bags.x_train.reshape(-1, 64)}
    test = {tuple(r.tolist()) for r in bags.x_test.reshape(-1, 64)}
    # digits has a few duplicated images; a shared instance would make most of the test set overlap
    assert len(train & test) <= 5
    again = mil.make_digit_bags(positive_ratio=0.3, bag_size=20, n_bags=(40, 30), seed=3)
    assert torch.equal(again.x_train, bags.x_train) and torch.equal(again.instance_labels_test,
                                                                    bags.instance_labels_test)
    other = mil.make_digit_bags(positive_ratio=0.3, bag_size=20, n_bags=(40, 30), seed=4)
    assert not torch.equal(other.x_train, bags.x_train)


def test_instances_are_distinct_within_a_bag_and_once_uses_each_once():
    b = mil.make_digit_bags(positive_ratio=0.5, bag_size=10, n_bags=(20, 20), seed=0)
    for bag in b.x_train:
        assert len({tuple(r.tolist()) for r in bag}) >= 9  # distinct draws (digits has rare duplicate images)
    once = mil.make_digit_bags(positive_ratio=0.5, bag_size=10, n_bags=(20, 20), sampling="once", seed=0)
    rows = [tuple(r.tolist()) for r in once.x_train.reshape(-1, 64)]
    assert len(set(rows)) >= len(rows) - 5
    with pytest.raises(ValueError, match="sampling='once'"):
        mil.make_digit_bags(positive_ratio=0.5, bag_size=20, n_bags=(200, 200), sampling="once")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(positive_ratio=0.02, bag_size=20), ValueError, "positive_ratio \\* bag_size"),
    (dict(positive_ratio=1.5), ValueError, "positive_ratio"),
    (dict(positive_ratio=0.0), ValueError, "positive_ratio"),
    (dict(bag_size=0), ValueError, "bag_size"),
    (dict(positive_digit=10), ValueError, "positive_digit"),
    (dict(positive_digit=1.0), TypeError, "positive_digit"),
    (dict(sampling="never"), ValueError, "sampling"),
    (dict(n_bags=200), TypeError, "n_bags"),
    (dict(n_bags=(1, 10)), ValueError, "n_bags"),
])
def test_digit_bags_refuse_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        mil.make_digit_bags(**kwargs)


# --- the ABMIL teacher ---------------------------------------------------------------------------------------------

def teacher_and_encodings(seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = mil.ABMILTeacher(width=8, attention_width=4, generator=g).double()
    return teacher, torch.randn(3, 7, 8, generator=g, dtype=torch.float64)


def test_attention_is_unchanged_by_a_constant_added_to_every_logit():
    teacher, h = teacher_and_encodings()
    logits_before, weights, a = teacher(h)
    with torch.no_grad():
        teacher.attention[2].bias += 3.7
    logits_after, shifted, a_shifted = teacher(h)
    assert torch.allclose(a_shifted, a + 3.7, atol=1e-12)
    assert torch.allclose(shifted, weights, atol=1e-12) and torch.allclose(logits_after, logits_before, atol=1e-12)


def test_masked_attention_is_zero_and_the_teacher_on_the_kept_subset_equals_it_on_the_masked_bag():
    teacher, h = teacher_and_encodings(1)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, [1, 4]] = False
    mask[2, :6] = False
    logits, weights, _ = teacher(h, mask)
    assert float(weights[~mask].detach().abs().max()) == 0.0
    assert torch.allclose(weights.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    for b in range(3):
        alone, _, _ = teacher(h[b:b + 1, mask[b]])
        assert torch.allclose(alone[0], logits[b], atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        teacher(h, torch.zeros(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        teacher(h, mask.long())


# --- pseudo labels ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalisation", mil.NORMALISATIONS)
def test_pseudo_labels_are_zero_on_negative_bags_clamped_and_monotone(normalisation):
    a, labels = logits_and_labels(0)
    y = mil.attention_pseudo_labels(a, labels, float(a.min()), float(a.max()), normalisation)
    assert float(y[labels == 0].abs().max()) == 0.0
    positive = y[labels == 1]
    assert float(positive.min()) >= 1e-5 and float(positive.max()) <= 1 - 1e-5
    if normalisation == "per_bag":  # each positive bag's extremes reach the clamp
        assert float(positive.max()) == pytest.approx(1 - 1e-5) and float(positive.min()) == pytest.approx(1e-5)
    for b in torch.nonzero(labels == 1).flatten():
        order = torch.argsort(a[b])
        assert bool((y[b, order].diff() >= 0).all())


@given(scale=st.floats(0.01, 100), shift=st.floats(-50, 50), seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_global_pseudo_labels_are_unchanged_by_an_affine_map_of_logits_and_range(scale, shift, seed):
    a, labels = logits_and_labels(seed)
    low, high = float(a.min()) - 0.1, float(a.max()) + 0.1
    y = mil.attention_pseudo_labels(a, labels, low, high)
    mapped = mil.attention_pseudo_labels(scale * a + shift, labels, scale * low + shift, scale * high + shift)
    assert torch.allclose(y, mapped, atol=1e-9)


@given(shift=st.floats(-30, 30), seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_per_bag_pseudo_labels_are_unchanged_by_a_constant_added_to_one_bag(shift, seed):
    a, labels = logits_and_labels(seed)
    y = mil.attention_pseudo_labels(a, labels, normalisation="per_bag")
    moved = a.clone()
    moved[0] += shift
    assert torch.allclose(mil.attention_pseudo_labels(moved, labels, normalisation="per_bag"), y, atol=1e-9)


def test_per_bag_is_the_min_max_of_exp_logits_and_differs_from_global():
    a, labels = logits_and_labels(2)
    y = mil.attention_pseudo_labels(a, labels, normalisation="per_bag")
    e = a[0].exp()
    assert torch.allclose(y[0], ((e - e.min()) / (e.max() - e.min())).clamp(1e-5, 1 - 1e-5), atol=1e-12)
    g = mil.attention_pseudo_labels(a, labels, float(a.min()), float(a.max()))
    assert float((g - y).abs().max()) > 0.05
    constant = mil.attention_pseudo_labels(torch.zeros(2, 4), torch.tensor([1, 0]), normalisation="per_bag")
    assert torch.equal(constant[0], torch.full((4,), 0.5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(normalisation="softmax"), "normalisation"),
    (dict(a_min=None), "a_min and a_max"),
    (dict(a_min=1.0, a_max=1.0), "greater than a_min"),
    (dict(labels=torch.tensor([1, 2, 0, 1, 0, 1])), "0s and 1s"),
    (dict(labels=torch.tensor([1, 0])), "bag_labels"),
])
def test_pseudo_labels_refuse_bad_input(kwargs, match):
    a, labels = logits_and_labels(0)
    labels = kwargs.pop("labels", labels)
    args = {"a_min": -1.0, "a_max": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        mil.attention_pseudo_labels(a, labels, **args)


# --- losses --------------------------------------------------------------------------------------------------------

def test_student_loss_matches_its_formula_and_is_half_cross_entropy_at_equal_weights():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    y = torch.rand(50, generator=g, dtype=torch.float64)
    p = torch.softmax(z, 1)
    for w in (0.1, 0.5, 0.9):
        formula = -(w * (1 - y) * torch.log(p[:, 0] + 1e-5) + (1 - w) * y * torch.log(p[:, 1] + 1e-5)).mean()
        assert float(mil.weno_student_loss(z, y, w)) == pytest.approx(float(formula), abs=1e-12)
    soft_ce = -((1 - y) * torch.log_softmax(z, 1)[:, 0] + y * torch.log_softmax(z, 1)[:, 1]).mean()
    assert float(mil.weno_student_loss(z, y, 0.5, eps=0)) == pytest.approx(0.5 * float(soft_ce), abs=1e-12)
    hard = (y > 0.5).long()
    ce = torch.nn.functional.cross_entropy(z, hard)
    assert float(mil.weno_student_loss(z, hard.double(), 0.5, eps=0)) == pytest.approx(0.5 * float(ce), abs=1e-12)


def test_losses_pass_gradcheck_in_float64():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: mil.weno_student_loss(t, y, 0.3), (z,))
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    assert torch.autograd.gradcheck(lambda t: mil.teacher_bag_loss(t, labels), (z,))


def test_teacher_loss_is_the_released_codes_guarded_bag_cross_entropy():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    p = torch.softmax(z, 1)[:, 1]
    code = -(labels * torch.log(p + 1e-5) + (1 - labels) * torch.log(1 - p + 1e-5)).mean()
    assert float(mil.teacher_bag_loss(z, labels)) == pytest.approx(float(code), abs=1e-12)
    assert float(mil.teacher_bag_loss(z, labels, eps=0)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(z, labels)), abs=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda z, y: mil.weno_student_loss(z, y, w_neg=1.2), "w_neg"),
    (lambda z, y: mil.weno_student_loss(z, y, eps=-1.0), "eps"),
    (lambda z, y: mil.weno_student_loss(z, y + 1.0), r"\[0, 1\]"),
    (lambda z, y: mil.weno_student_loss(z[:3], y), "pseudo_labels"),
    (lambda z, y: mil.weno_student_loss(z[:, :1], y), r"\(N, 2\)"),
    (lambda z, y: mil.teacher_bag_loss(z, y), "0s and 1s"),
])
def test_losses_refuse_bad_input(call, match):
    z, y = torch.randn(5, 2), torch.full((5,), 0.3)
    with pytest.raises(ValueError, match=match):
        call(z, y)


# --- hard positive mining ----------------------------------------------------------------------------------------

@given(seed=st.integers(0, 10_000), tau=st.floats(0.01, 1.0), rule=st.sampled_from(["threshold", "keep_above"]))
@settings(max_examples=60, deadline=None)
def test_mining_never_touches_negative_bags_and_never_empties_a_bag(seed, tau, rule):
    g = torch.Generator().manual_seed(seed)
    p1 = torch.rand(6, 5, generator=g)
    labels = torch.tensor([1, 0, 1, 0, 1, 1])
    keep = mil.hard_positive_mask(p1, labels, rule, tau)
    assert bool(keep[labels == 0].all()) and bool(keep.any(1).all())
    for b in torch.nonzero(labels == 1).flatten():
        expected = p1[b] <= tau if rule == "threshold" else p1[b] >= tau
        if expected.any():
            assert torch.equal(keep[b], expected)
        else:
            assert int(keep[b].sum()) == 1 and bool(keep[b, p1[b].argmax()])


def test_top_k_keeps_the_k_lowest_and_refuses_k_outside_the_bag():
    p1 = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.9, 0.1, 0.5, 0.3]])
    keep = mil.hard_positive_mask(p1, torch.tensor([1, 0]), "top_k", top_k=2)
    assert keep[0].tolist() == [False, True, False, True] and bool(keep[1].all())
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        mil.hard_positive_mask(p1, torch.tensor([1, 0]), "top_k", top_k=5)
    with pytest.raises(ValueError, match="needs top_k"):
        mil.hard_positive_mask(p1, torch.tensor([1, 0]), "top_k")


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=0.0), "threshold"), (dict(threshold=1.5), "threshold"), (dict(rule="random"), "rule"),
])
def test_mining_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mil.hard_positive_mask(torch.rand(2, 3), torch.tensor([1, 0]), **kwargs)
    with pytest.raises(ValueError, match="probabilities"):
        mil.hard_positive_mask(torch.rand(2, 3) + 1.0, torch.tensor([1, 0]))


# --- the two phases ------------------------------------------------------------------------------------------------

def small_network(seed=0):
    return mil.MILNetwork(in_features=64, width=16, attention_width=8, student_hidden=(8,),
                          generator=torch.Generator().manual_seed(seed))


def gradients_reached(network, loss):
    network.zero_grad(set_to_none=True)
    loss.backward()
    return {part: any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in getattr(network, part).parameters())
            for part in ("encoder", "teacher", "student")}


def test_each_loss_reaches_only_its_own_head_and_the_shared_encoder(bags):
    network = small_network()
    x, yb = bags.x_train[:8], bags.bag_labels_train[:8]
    teacher_loss = mil.teacher_bag_loss(network(x), yb)
    assert gradients_reached(network, teacher_loss) == {"encoder": True, "teacher": True, "student": False}
    with torch.no_grad():
        a = network.teacher.attention_logits(network.encoder(x))
    targets = mil.attention_pseudo_labels(a, yb, float(a.min()), float(a.max()) + 1e-3).reshape(-1)
    student_loss = mil.weno_student_loss(network.instance_logits(x.reshape(-1, 64)), targets)
    assert gradients_reached(network, student_loss) == {"encoder": True, "teacher": False, "student": True}


def test_fit_weno_is_deterministic_learns_and_abmil_leaves_the_student_untouched(bags):
    def trained(seed, **kwargs):
        network = small_network(seed)
        history = mil.fit_weno(network, bags.x_train, bags.bag_labels_train, epochs=6,
                               generator=torch.Generator().manual_seed(seed), **kwargs)
        return network, history

    a, history = trained(0, mining_start=4)
    b, again = trained(0, mining_start=4)
    assert history == again
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert history["teacher_loss"][-1] < history["teacher_loss"][0]
    assert history["kept_fraction"][:3] == [1.0, 1.0, 1.0]
    scores = mil.mil_scores(a, bags.x_test)
    assert mil.bag_auc(scores["teacher_bag"], bags.bag_labels_test) > 0.8

    abmil = small_network(1)
    student_before = [p.clone() for p in abmil.student.parameters()]
    history = mil.fit_abmil(abmil, bags.x_train, bags.bag_labels_train, epochs=6,
                            generator=torch.Generator().manual_seed(1))
    assert history.loss[-1] < history.loss[0]
    assert all(torch.equal(p, q) for p, q in zip(student_before, abmil.student.parameters()))


def test_fit_weno_refuses_bad_input(bags):
    network = small_network()
    run = dict(epochs=3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="mining_start"):
        mil.fit_weno(network, bags.x_train, bags.bag_labels_train, mining_start=4, **run)
    with pytest.raises(ValueError, match="threshold"):
        mil.fit_weno(network, bags.x_train, bags.bag_labels_train, mining_start=1, threshold=2.0, **run)
    with pytest.raises(ValueError, match="w_neg"):
        mil.fit_weno(network, bags.x_train, bags.bag_labels_train, w_neg=-0.1, **run)
    with pytest.raises(ValueError, match="bags"):
        mil.fit_weno(network, bags.x_train[0], bags.bag_labels_train, **run)
    with pytest.raises(TypeError, match="generator"):
        mil.fit_weno(network, bags.x_train, bags.bag_labels_train, epochs=3, generator=0)


# --- AUCs ----------------------------------------------------------------------------------------------------------

def test_aucs_are_sklearns_and_refuse_one_class():
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.rand(4, 5, generator=g), (torch.rand(4, 5, generator=g) > 0.6).long()
    assert mil.instance_auc(scores, labels) == pytest.approx(roc_auc_score(labels.reshape(-1), scores.reshape(-1)))
    assert mil.bag_auc(torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0, 1, 1])) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        mil.bag_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="same number"):
        mil.instance_auc(scores, labels[:2])


def test_a_resumed_run_is_the_uninterrupted_run_bit_for_bit(bags):
    """WENO to epoch 3, then resumed with mining from epoch 4, equals WENO+HPM trained in one go."""
    def weno(**kwargs):
        network = small_network(5)
        generator = torch.Generator().manual_seed(7)
        history = mil.fit_weno(network, bags.x_train, bags.bag_labels_train, epochs=6, generator=generator, **kwargs)
        return network, history

    whole, whole_history = weno(mining_start=4, threshold=0.5)  # a low threshold, so that mining bites early
    plain, plain_history = weno(snapshot_at=3)
    snapshot = plain_history.pop("snapshot")
    assert snapshot.epoch == 3 and len(snapshot.history["teacher_loss"]) == 3
    resumed = small_network(99)  # other initial weights: the snapshot's replace them
    history = mil.fit_weno(resumed, bags.x_train, bags.bag_labels_train, epochs=6,
                           generator=torch.Generator().manual_seed(0), mining_start=4, threshold=0.5,
                           resume=snapshot)
    assert history == whole_history
    assert all(torch.equal(p, q) for p, q in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert plain_history["teacher_loss"][:3] == whole_history["teacher_loss"][:3]
    assert plain_history["kept_fraction"][3:] == [1.0] * 3 and whole_history["kept_fraction"][3] < 1.0
    with pytest.raises(TypeError, match="WENOSnapshot"):
        mil.fit_weno(resumed, bags.x_train, bags.bag_labels_train, epochs=6,
                     generator=torch.Generator(), resume={"epoch": 3})
    with pytest.raises(ValueError, match="snapshot_at"):
        mil.fit_weno(resumed, bags.x_train, bags.bag_labels_train, epochs=6, generator=torch.Generator(),
                     snapshot_at=7)
