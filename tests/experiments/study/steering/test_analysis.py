"""The free-form steering analysis against independent computations: the held-out choice of α from stored per-α
scores, the matched-cost interpolation, each control's items interpolated along its grid."""

import numpy as np
import pytest

from configs.study import get_config
from experiments.study import steering
from experiments.study.steering import score


def _free(scores_esn, damage_esn, scores_random, damage_random, labels):
    """A prepare()-shaped dict from per-α item scores [S, 1 + A, E, N] / [S, R, 1 + A, E, N] and damages."""
    axes = {"score": scores_esn, "emotion": scores_esn, "instruction": scores_esn, "fluency": scores_esn}
    rnd = {k: scores_random for k in axes}
    clean = {k: scores_esn[0, 0] for k in axes}
    return {"esn": axes, "random": rnd, "clean": clean, "damage": {"esn": damage_esn, "random": damage_random},
            "selection": score.halves(labels, 1)}


def test_alpha_is_chosen_on_the_selection_half():
    labels = np.repeat(np.arange(4), 6)
    sel = score.halves(labels, 1)
    assert np.array_equal(np.bincount(labels[sel]), [3] * 4) and sel.sum() == 12
    assert not np.array_equal(sel, score.halves(labels, 2))
    # α grid 0, 1, 2, 4: on the selection half α 2 is best; on the reported half α 4 would be.
    per_alpha_sel, per_alpha_rep = [0.0, 0.2, 0.6, 0.5], [0.0, 0.2, 0.3, 0.9]
    s = np.zeros((1, 4, 4, len(labels)))
    for a in range(4):
        s[0, a][:, sel], s[0, a][:, ~sel] = per_alpha_sel[a], per_alpha_rep[a]
    s[0][:, labels[None, :] == np.arange(4)[:, None]] = np.nan  # a clip is not steered toward its own label
    rnd = np.zeros((1, 1, 4, 4, len(labels)))
    prep = _free(s, np.array([[0.0, 0.1, 0.2, 0.4]]), rnd, np.array([[[0.0, 0.1, 0.2, 0.4]]]), labels)
    cfg = get_config("bootstrap=50,permutations=50")
    v = steering.analysis.selector_result(prep, 0, (0.0, 1.0, 2.0, 4.0), (0,), cfg)
    stored = v["selection"]
    best = max(range(1, 4), key=lambda a: (stored[a], -a))  # independent: argmax, ties to the smaller α
    assert v["chosen_alpha"] == 2.0 == (0.0, 1.0, 2.0, 4.0)[best]
    assert v["steering_score"] == pytest.approx(0.3)  # reported at the chosen α, not the reported half's best
    assert score.choose([0.5, 0.5, 0.2]) == 0 and score.choose([np.nan, 0.1]) == 1


@pytest.mark.parametrize("target,damage,alpha,within", [
    (0.3, [0.0, 0.2, 0.6, 1.0], 1.25, True),  # between α 1 and 2
    (0.0, [0.0, 0.2, 0.6, 1.0], 0.0, True),
    (1.5, [0.0, 0.2, 0.6, 1.0], 4.0, False),  # costlier than any control gain: its largest α
    (0.35, [0.0, 0.4, 0.3, 0.8], 0.875, True),  # not monotone: the first crossing walking up the grid
    (0.5, [0.0, 0.4, 0.3, 0.8], 2.8, True),
    (-0.1, [0.0, 0.2, 0.6, 1.0], 0.0, False)])
def test_matched_cost(target, damage, alpha, within):
    grid = np.array([0.0, 1.0, 2.0, 4.0])
    w, inside = score.matched(target, damage)
    assert inside == within and w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w @ grid == pytest.approx(alpha)
    if within:
        assert w @ np.asarray(damage) == pytest.approx(target)
        segment = next(i for i in range(3) if min(damage[i:i + 2]) <= target <= max(damage[i:i + 2]))
        f = np.interp(target, sorted(damage[segment:segment + 2]), [0.0, 1.0])
        f = f if damage[segment] <= damage[segment + 1] else 1 - f
        assert w @ grid == pytest.approx(grid[segment] + f * (grid[segment + 1] - grid[segment]))


def test_matched_control_interpolates_each_item():
    labels = np.repeat(np.arange(4), 2)
    rng = np.random.default_rng(0)
    rnd = rng.random((1, 2, 3, 4, len(labels)))
    prep = _free(rng.random((1, 3, 4, len(labels))), np.array([[0.0, 0.5, 1.0]]), rnd,
                 np.array([[[0.0, 0.25, 0.75], [0.0, 2.0, 4.0]]]), labels)
    m = steering.analysis.matched_control(prep, 0, 0, 1)  # the ESNs' damage at α index 1: 0.5, between 0.25 and 0.75
    assert m["within"] and m["damage"] == pytest.approx(0.5)
    assert np.allclose(m["items"]["score"], 0.5 * rnd[0, 0, 1] + 0.5 * rnd[0, 0, 2])
    m = steering.analysis.matched_control(prep, 0, 1, 1)
    assert np.allclose(m["items"]["score"], 0.75 * rnd[0, 1, 0] + 0.25 * rnd[0, 1, 1])
