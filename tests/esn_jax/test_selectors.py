"""Selectors against direct reimplementations of their formulas on random statistics."""

import warnings
from fractions import Fraction

import jax
import numpy as np
import pytest
import torch

from esn_jax import scoring
from esn_jax import selectors as sel
from esn_jax import stats as st

E, LAYERS, NEURONS = 4, 3, 40


def random_stats(seed, tokens=(50, 40, 60, 30), ties=False):
    """Statistics with integer counts; ``ties`` repeats values so scores collide; an all-zero neuron."""
    rng = np.random.default_rng(seed)
    tokens = np.asarray(tokens, np.int32)
    levels = 3 if ties else 10**6
    frac = rng.integers(0, levels, (E, LAYERS, NEURONS)) / (levels - 1)
    count = np.round(frac * tokens[:, None, None]).astype(np.int32)
    count[:, 1, 7] = 0
    mu = rng.integers(-3, 4, (E, LAYERS, NEURONS)) / 2.0 if ties else rng.normal(size=(E, LAYERS, NEURONS))
    s1 = (mu * tokens[:, None, None]).astype(np.float32)
    return st.EmotionStats(count, s1, s1 * 2, tokens, (tokens > 0).astype(np.int32) * 5,
                           (tokens > 0).astype(np.int32) * 6, LAYERS, NEURONS, "gate_act", "all")


def oracle_top(score_fn, emotions, k, per_layer, shape=(E, LAYERS, NEURONS)):
    """Sorted (−score, layer, neuron) tuples: the k best per emotion (per layer), ties to the lower index."""
    mask = np.zeros(shape, bool)
    for e in emotions:
        keys = [(-score_fn(e, j, n), j, n) for j in range(shape[1]) for n in range(shape[2])]
        if per_layer:
            for layer in range(shape[1]):
                for _, j, n in sorted(k for k in keys if k[1] == layer)[:per_layer]:
                    mask[e, j, n] = True
        else:
            for _, j, n in sorted(keys)[:k]:
                mask[e, j, n] = True
    return mask


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("per_layer", [0, 3])
def test_lap_mad_cas(ties, per_layer):
    stats = random_stats(0, ties=ties)
    count, s1, tokens = np.asarray(stats.count_pos), np.asarray(stats.sum, np.float64), np.asarray(stats.tokens)
    def prob(e, j, n):
        return count[e, j, n] / tokens[e]
    def mu(e, j, n):
        return s1[e, j, n] / tokens[e]
    def mad(e, j, n):  # exact rationals, so that tied scores tie
        others = [Fraction(float(mu(o, j, n))) for o in range(E) if o != e]
        return Fraction(float(mu(e, j, n))) - sum(others) / len(others)
    def cas(e, j, n):
        return mu(e, j, n) - max(mu(o, j, n) for o in range(E) if o != e)
    for method, fn in (("lap", prob), ("mad", mad), ("cas", cas)):
        got = sel.select(stats, method, per_layer or 10, per_layer=bool(per_layer))
        np.testing.assert_array_equal(got, oracle_top(fn, range(E), 10, per_layer), err_msg=method)


def tang_identify(over_zero, n):
    """Our own torch re-implementation of the recipe of Tang et al.'s identify.py, in its tensor layout.

    over_zero [L, I, lang], n [lang] -> the per-language [L, I] bool masks.
    """
    top_rate, filter_rate, activation_bar_ratio = 0.01, 0.95, 0.95
    activation_probs = over_zero / n
    normed = activation_probs / activation_probs.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_probs = torch.where(normed > 0, normed.log(), 0)
    entropy = -torch.sum(normed * log_probs, dim=-1)
    flattened_probs = activation_probs.flatten()
    top_prob_value = flattened_probs.kthvalue(round(len(flattened_probs) * filter_rate)).values.item()
    top_position = (activation_probs > top_prob_value).sum(dim=-1)
    entropy[top_position == 0] = torch.inf
    flattened_entropy = entropy.flatten()
    _, index = flattened_entropy.topk(round(len(flattened_entropy) * top_rate), largest=False)
    row, col = index // entropy.size(1), index % entropy.size(1)
    selected = activation_probs[row, col].transpose(0, 1)
    bar = flattened_probs.kthvalue(round(len(flattened_probs) * activation_bar_ratio)).values.item()
    lang, indice = torch.where(selected > bar)
    mask = np.zeros((over_zero.shape[-1], *entropy.shape), bool)
    mask[lang.numpy(), row[indice].numpy(), col[indice].numpy()] = True
    return mask


def test_lape_equals_tang_identify():
    rng = np.random.default_rng(1)
    layers, neurons = 4, 300  # 1 % of 1200 neurons = 12 kept
    tokens = np.array([500, 400, 700, 300], np.int32)
    # Beta-shaped probabilities give a spread of entropies without exact ties (topk's order on ties is unspecified).
    count = np.round(rng.beta(0.5, 2.0, (E, layers, neurons)) * tokens[:, None, None]).astype(np.int32)
    stats = st.EmotionStats(count, np.zeros(count.shape, np.float32), np.zeros(count.shape, np.float32), tokens,
                            np.ones(E, np.int32), np.ones(E, np.int32), layers, neurons, "gate_act", "all")
    want = tang_identify(torch.tensor(np.moveaxis(count, 0, -1), dtype=torch.float64),
                         torch.tensor(tokens, dtype=torch.float64))
    got = sel.select(stats, "lape", 0.01)
    assert got.any(0).sum() <= 12 and got.sum() >= 12
    np.testing.assert_array_equal(got, want)


def lape_oracle(prob, present, k):
    """Tang's recipe written with Python sorting: ties in entropy go to the lower (layer, neuron)."""
    p = prob[present]
    flat = sorted(p.ravel())
    q = flat[round(len(flat) * 0.95) - 1]
    entropies = []
    for j in range(p.shape[1]):
        for n in range(p.shape[2]):
            col = p[:, j, n]
            h = np.inf
            if (col > q).any():
                tot = col.sum()
                h = -sum(x / tot * np.log(x / tot) for x in col if x > 0)
            entropies.append((h, j, n))
    mask = np.zeros(prob.shape, bool)
    idx = np.flatnonzero(present)
    for _, j, n in sorted(entropies)[:k]:
        for row, e in enumerate(idx):
            mask[e, j, n] = p[row, j, n] > q
    return mask


def test_lape_ties_zero_rows_and_empty_emotion():
    rng = np.random.default_rng(2)
    tokens = np.array([10, 0, 10, 10], np.int32)
    # Few probability levels with a rare top make many neurons tie in entropy while some pass the filter.
    levels = rng.choice([0, 1, 2, 3, 6, 9], p=[0.3, 0.3, 0.2, 0.12, 0.05, 0.03], size=(E, LAYERS, NEURONS))
    count = (levels * (tokens > 0)[:, None, None]).astype(np.int32)
    count[:, 1, 7] = 0
    zeros = np.zeros(count.shape, np.float32)
    stats = st.EmotionStats(count, zeros, zeros, tokens, np.sign(tokens), np.ones(E, np.int32), LAYERS, NEURONS,
                            "gate_act", "all")
    present = np.array([True, False, True, True])
    with pytest.warns(UserWarning, match=r"emotions \[1\]"):
        got = sel.select(stats, "lape", 15)
    np.testing.assert_array_equal(got, lape_oracle(count / np.maximum(tokens, 1)[:, None, None], present, 15))
    assert got.any(0).sum() >= 5 and not got[1].any() and not got[:, 1, 7].any()


def test_empty_emotion_is_left_out_of_contrasts():
    stats = random_stats(3, tokens=(50, 0, 60, 30))
    mu = np.asarray(stats.sum, np.float64) / np.maximum(np.asarray(stats.tokens), 1)[:, None, None]
    keep = [0, 2, 3]
    def mad(e, j, n):
        others = [Fraction(float(mu[o, j, n])) for o in keep if o != e]
        return Fraction(float(mu[e, j, n])) - sum(others) / len(others)
    with pytest.warns(UserWarning, match="no identification items"):
        got = sel.select(stats, "mad", 0.05)
    np.testing.assert_array_equal(got, oracle_top(mad, keep, 6, 0))
    assert not got[1].any()


def test_random_matches_per_layer_counts_and_is_seeded():
    stats = random_stats(4)
    like = sel.select(stats, "lap", 0.1)
    a, b, c = (sel.select(stats, "random", like=like, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.sum(-1), like.sum(-1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != like).any()


def test_bad_k_and_shapes_are_refused():
    stats = random_stats(5)
    for k in (0, -3, LAYERS * NEURONS + 1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="k"):
            sel.select(stats, "lap", k)
    with pytest.raises(ValueError, match="per layer"):
        sel.select(stats, "lap", NEURONS + 1, per_layer=True)
    with pytest.raises(ValueError, match="like"):
        sel.select(stats, "random", like=np.zeros((E, LAYERS, NEURONS + 1), bool))
    with pytest.raises(ValueError, match="scores"):
        sel.select(stats, "grad", 5, scores=np.zeros((E, LAYERS + 1, NEURONS)))
    with pytest.raises(ValueError, match="unknown method"):
        sel.select(stats, "entropy", 5)


def test_grad_attribution_matches_finite_differences(tiny):
    module, params = tiny
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 48, (4, 5)).astype(np.int32)
    labels = np.array([0, 1, 0, 2])
    label_tokens = ((4, 2), (9,), (1,))
    grad_sum, items = sel.attribution(module, params, {"input_ids": ids}, labels, label_tokens, 3)
    np.testing.assert_array_equal(np.asarray(items), [2, 1, 1])
    score = jax.jit(scoring.score_labels, static_argnames=("module", "label_token_ids"))
    eps = 1e-2
    for e, layer, n in ((0, 0, 3), (0, 1, 17), (1, 1, 5), (2, 0, 20)):
        rows = labels == e
        bumped = []
        for sign in (1, -1):
            scale = np.ones((2, 24), np.float32)
            scale[layer, n] += sign * eps
            logp = score(module, params, {"input_ids": ids}, label_tokens, {"gate_act": {"scale": scale}})
            bumped.append(np.asarray(logp, np.float64)[rows, e].sum())
        fd = (bumped[0] - bumped[1]) / (2 * eps)
        np.testing.assert_allclose(float(grad_sum[e, layer, n]), fd, rtol=2e-2, atol=2e-4)
    stats = st.EmotionStats.zeros(3, 2, 24).replace(items=items, tokens=items * 5)
    scores = np.asarray(grad_sum) / np.asarray(items)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sel.select(stats, "grad", 4, scores=scores)
    np.testing.assert_array_equal(got, oracle_top(lambda e, j, n: scores[e, j, n], range(3), 4, 0, (3, 2, 24)))
    with pytest.raises(ValueError, match="needs scores"):
        sel.select(stats, "grad", 4)
