"""The stability grid on evidence whose answer is known by construction, the verdict thresholds, the stratified
resamples, and the vectorised bootstraps against esn_jax.metrics' scalar one."""

import numpy as np
import pytest

from configs.study import get_config
from esn_jax import metrics
from experiments.study import analysis, steering, verdicts
from experiments.study.evidence import Evidence
from experiments.study.run import analyze

E, PER, LAYERS, NEURONS = 4, 10, 4, 8


def _logp(pred: np.ndarray) -> np.ndarray:
    """Log-probs [..., N, E] whose argmax is pred [..., N], the runner-up 1 nat below."""
    out = np.full((*pred.shape, E), -3.0, np.float32)
    np.put_along_axis(out, pred[..., None], -0.5, -1)
    return out


def _evidence() -> Evidence:
    """One selector ("mad") whose emotion-e mask makes every e item wrong and nothing else, three random controls of
    which the third does exactly the same (so it alone ties the ESNs), gain that moves every other item to e at
    α 8 (half of them at α 2) while no control moves any, and every selected neuron in layer 0."""
    labels = np.repeat(np.arange(E), PER)
    n = len(labels)
    ablated = np.stack([np.where(labels == m, (labels + 1) % E, labels) for m in range(E)])  # [E(mask), N]
    deact = np.stack([ablated, np.tile(labels, (E, 1)), np.tile(labels, (E, 1)), ablated])  # [1 + R, E, N]
    steer = np.stack([np.stack([np.where((labels != t) & (np.arange(n) % 2 == 0), t, labels) for t in range(E)]),
                      np.stack([np.full(n, t) for t in range(E)])])  # [A, E, N]
    masks = np.zeros((1, 1, 4, E, LAYERS, NEURONS), bool)
    masks[..., 0, :2] = True
    return Evidence(labels=labels, clean=_logp(labels[None]), deactivate=_logp(deact[None, None, None]),
                    steer=_logp(steer[None, None]), steer_random=_logp(np.tile(labels, (1, 1, 3, E, 1))),
                    agnostic=_logp(np.tile(labels, (1, 1, 2, 2, 1))), masks=masks,
                    collateral_clean=np.zeros(2), collateral_masked=np.zeros((1, 1, 4, E, 2)), unknown_share=0.0,
                    free=_free(labels))


def _free(labels) -> dict:
    """Free answers known by construction (one selector, 3 seeds, α 2 and 8, DiffMean factors 1 and 4): at α 2 the
    ESNs make every clip answer the target fluently, at α 8 they break it (no label, a loss of 20); the random controls
    leave the answers alone at α 2 and break them at α 8, at a plain-text damage of 0.05 and 2.0 against the ESNs' 0.1
    and 1.0, so that at the ESNs' cost a control is 0.05 / 1.95 of the way to α 8: it scores 0 either way."""
    layout = steering.stages.Layout(selectors=1, seeds=3, alphas=2, factors=2, emotions=E)
    n = len(labels)
    target = np.arange(E)[:, None].repeat(n, 1)
    broken = np.full((E, n), -1)
    parts = {"clean": labels[None], "esn": np.stack([target, broken])[None],
             "random": np.stack([np.stack([np.tile(labels, (E, 1)), broken])] * 3)[None],
             "diffmean": np.tile(labels, (2, 2, E, 1))}
    parsed = np.concatenate([parts[k].reshape(-1, n) for k in layout.shapes])
    assert len(parsed) == layout.variants
    ok = parsed >= 0
    damage = np.concatenate([[0.0], np.repeat([0.1, 1.0], E), np.tile(np.repeat([0.05, 2.0], E), 3),
                             np.zeros(2 * 2 * E)])
    return {"labels": labels, "items": np.arange(n).astype(str), "layout": np.array([1, 3, 2, 2, E]),
            "text": np.full((1, *parsed.shape), "x"), "parsed": parsed[None], "named": ok[None].astype(int),
            "loss": np.where(ok, 1.0, 20.0)[None], "repetition": np.zeros((1, *parsed.shape)),
            "prompting_text": np.full((1, E, n), "x"), "prompting_parsed": target[None],
            "prompting_named": np.ones((1, E, n), int), "prompting_loss": np.ones((1, E, n)),
            "prompting_repetition": np.zeros((1, E, n)), "damage": damage,
            "diffmean_relative": np.ones((2, E)), "diffmean_vectors": np.zeros((E, LAYERS, NEURONS))}


def test_grid_compares_each_random_control_alone():
    cfg = get_config("selectors=mad,alphas=2+8,bootstrap=200,permutations=500,resamples=20")
    base = {"prompts": [{"name": "asked", "question": "q"}], "data": {"dataset": "made_up"}}
    r = analyze(_evidence(), base, cfg)
    f = {x["id"]: x for x in r["findings"]}
    # 1-3: the ESNs beat two controls and tie the third: the rule holds in the cells of seeds 0 and 1 only.
    for fid in ("1", "2", "3"):
        assert (f[fid]["holds_in"], f[fid]["grid_size"], f[fid]["verdict"]) == (40, 60, "fragile"), fid
    assert f["1"]["point_verdict"] == "does not hold"  # beyond every control: not beyond the third
    assert f["3"]["point_verdict"] == "holds"  # against the controls' mean
    assert (f["1"]["selector"], f["1"]["per_selector"]["mad"]["point"]) == ("mad", False)
    # 4, free form: the ESNs steer fluently at α 2 (chosen on the selection half), the controls at matched cost do not.
    assert (f["4"]["holds_in"], f["4"]["grid_size"], f["4"]["verdict"], f["4"]["point_verdict"]) == (
        60, 60, "holds", "holds")
    assert f["4"]["selector"] == "mad" and f["4"]["free_form"]["verdict"] == "holds"
    free = r["steering_free"]["selectors"]["mad"]
    assert (free["chosen_alpha"], free["steering_score"], free["text_damage"]) == (2.0, 1.0, 0.1)
    assert [c["steering_score"] for c in free["controls"]] == [0.0] * 3
    assert [c["alpha"] for c in free["controls"]] == pytest.approx([2 + 6 * 0.05 / 1.95] * 3)
    assert (free["toward"], free["away"]) == (1.0, 0.0)
    assert r["steering_free"]["prompting"]["steering_score"] == 1.0
    c = f["4"]["constrained"]
    assert (c["holds_in"], c["grid_size"], c["verdict"], c["point_verdict"], c["selector"]) == (
        60, 60, "holds", "holds", "mad")
    # 5 reads no random control: prompts × resamples; targeted injection changes nothing here, as Union and Mix.
    assert (f["5"]["holds_in"], f["5"]["grid_size"], f["5"]["verdict"]) == (0, 20, "does not hold")
    assert (f["6a"]["holds_in"], f["6a"]["grid_size"], f["6a"]["verdict"]) == (20, 20, "holds")
    assert (f["6b"]["holds_in"], f["6b"]["grid_size"], f["6b"]["verdict"]) == (None, 0, "not tested")
    assert r["summary"]["verdicts"] == {"holds": 2, "fragile": 3, "does not hold": 1, "not tested": 1}
    assert r["near_ties"]["deactivate"]["near_ties"] == 0
    near = _evidence().with_logp(lambda x: np.where(x == -3.0, -0.5 - 5e-5, x))  # every runner-up 5e-5 below
    assert analyze(near, base, cfg)["near_ties"]["steer"]["share"] == 1.0


@pytest.mark.parametrize("holds,size,word", [(16, 20, "holds"), (15, 20, "fragile"), (4, 20, "fragile"),
                                             (3, 20, "does not hold"), (0, 1, "does not hold")])
def test_thresholds(holds, size, word):
    cells = ["holds"] * holds + ["does not hold"] * (size - holds) + ["not tested"] * 3
    assert verdicts.stability(cells) == {"verdict": word, "holds_in": holds, "grid_size": size}
    assert verdicts.stability(["not tested"] * 4) == {"verdict": "not tested", "holds_in": None, "grid_size": 0}


def test_stratified_resample_keeps_each_emotion():
    labels = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    idx = verdicts._stratified(labels, np.random.default_rng(1))
    assert np.array_equal(np.bincount(labels[idx]), np.bincount(labels))  # same count per emotion, drawn within it
    assert len({tuple(verdicts._stratified(labels, np.random.default_rng(s))) for s in range(5)}) > 1


def test_vectorised_bootstraps_equal_the_scalar_one():
    cfg = get_config("bootstrap=300")
    rng = np.random.default_rng(3)
    labels, clean = rng.integers(0, E, 24), rng.integers(0, E, 24)
    masked = rng.integers(0, E, (3, E, 24))  # ESNs and two controls
    d = analysis.deactivation(labels, clean, masked, E, cfg)
    point, low, high = metrics.bootstrap_ci(lambda lab, c, m: analysis.mean_specificity(lab, c, m, E), labels, clean,
                                            masked[0].T, num_samples=300, seed=cfg.seed)
    assert d["mean_specificity"] == pytest.approx(point) and d["ci"] == pytest.approx([low, high])
    esn, rnd = rng.integers(0, E, (2, E, 24)), rng.integers(0, E, (2, E, 24))
    v = analysis.steering(labels, clean, esn, rnd, (2.0, 8.0), cfg)
    for r in range(2):
        def gap(lab, pe, pr):
            return np.nanmean([metrics.steering_rate(lab, pe[:, t], t) - metrics.steering_rate(lab, pr[:, t], t)
                               for t in range(E)])
        point, low, high = metrics.bootstrap_ci(gap, labels, esn[-1].T, rnd[r].T, num_samples=300, seed=cfg.seed)
        assert v["gap_per_seed"][r] == pytest.approx(point) and v["gap_ci_per_seed"][r] == pytest.approx([low, high])
