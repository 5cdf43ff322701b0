"""Metrics against hand-counted examples and direct loops."""

import numpy as np
import pytest

from esn_jax import metrics as m

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
PREDS = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])


def test_confusion_recall_accuracy_uar_f1():
    cm = m.confusion(LABELS, PREDS, 4)
    want = np.zeros((4, 4), int)
    for y, p in zip(LABELS, PREDS, strict=True):
        want[y, p] += 1
    np.testing.assert_array_equal(cm, want)
    rec = m.recall(LABELS, PREDS, 4)
    np.testing.assert_allclose(rec[:3], [3 / 4, 1 / 2, 3 / 4])
    assert np.isnan(rec[3])
    assert m.accuracy(LABELS, PREDS) == pytest.approx(7 / 10)
    assert m.uar(LABELS, PREDS, 4) == pytest.approx((3 / 4 + 1 / 2 + 3 / 4) / 3)
    f1 = []
    for c in range(3):
        tp = np.sum((c == LABELS) & (c == PREDS))
        prec, recl = tp / np.sum(c == PREDS), tp / np.sum(c == LABELS)
        f1.append(2 * prec * recl / (prec + recl))
    assert m.macro_f1(LABELS, PREDS, 4) == pytest.approx(np.mean(f1))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        m.confusion(LABELS, PREDS, 2)


def test_deactivation_matrix_and_specificity():
    masked = np.stack([np.where(e == LABELS, (LABELS + 1) % 3, LABELS) for e in range(3)])
    delta = m.deactivation_matrix(LABELS, PREDS, masked, 3)
    clean = [3 / 4, 1 / 2, 3 / 4]
    for e in range(3):
        for c in range(3):
            assert delta[e, c] == pytest.approx((0.0 if c == e else 1.0) - clean[c])
    spec = m.specificity(delta)
    for e in range(3):
        cross = np.mean([delta[e, c] for c in range(3) if c != e])
        assert spec["cross"][e] == pytest.approx(cross)
        assert spec["specificity"][e] == pytest.approx(delta[e, e] - cross)


def test_steering_curve():
    by_alpha = np.stack([PREDS, np.full(10, 2), np.where(LABELS == 0, 2, PREDS)])
    curve = m.steering_curve(LABELS, by_alpha, target=2)
    others = LABELS != 2
    np.testing.assert_allclose(curve, [np.mean(p[others] == 2) for p in by_alpha])
    assert curve[1] == 1.0


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    point, lo, hi = m.bootstrap_ci(m.accuracy, labels, preds, num_samples=300)
    assert lo < point < hi and point == m.accuracy(labels, preds)
    se = np.sqrt(point * (1 - point) / 200)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.3)
    assert m.bootstrap_ci(m.accuracy, labels, preds, num_samples=300) == (point, lo, hi)


def test_tests_against_random_control():
    assert m.empirical_p(-0.5, [-0.1, 0.0, -0.2, 0.1]) == pytest.approx(1 / 5)
    assert m.empirical_p(-0.15, [-0.1, 0.0, -0.2, 0.1]) == pytest.approx(2 / 5)
    a = np.r_[np.zeros(40), np.ones(10)]
    assert m.paired_permutation_test(a, np.ones(50), num_permutations=2000) < 0.01
    assert m.paired_permutation_test(a, a[::-1], num_permutations=2000) > 0.5


def test_jaccard_and_layer_histogram():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 2, 10)) < 0.4, rng.random((2, 2, 10)) < 0.4
    jm = m.jaccard_matrix(a, b)
    for i in range(3):
        for j in range(2):
            inter = sum(1 for x, y in zip(a[i].ravel(), b[j].ravel(), strict=True) if x and y)
            union = sum(1 for x, y in zip(a[i].ravel(), b[j].ravel(), strict=True) if x or y)
            assert jm[i, j] == pytest.approx(inter / union)
    assert np.isnan(m.jaccard(np.zeros(4, bool), np.zeros(4, bool)))
    np.testing.assert_array_equal(m.layer_histogram(a), [[int(a[i, layer].sum()) for layer in range(2)]
                                                         for i in range(3)])
