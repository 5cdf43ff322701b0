"""Selectors: which neurons are sensitive to which emotion, from :class:`~esn_jax.stats.EmotionStats`.

``select(stats, method, k)`` returns a bool mask [E, L, I]. Score-based methods keep, for every emotion,
the k highest-scoring neurons over the whole model (or k per layer with ``per_layer=True``); ties go to
the lower (layer, neuron) index. ``k`` is a count, or a fraction (0 < k < 1) of all L·I neurons (of I
per layer). An emotion without identification items or tokens gets an empty row and a warning, and is
left out of every other emotion's comparison.

Methods (P = activation probability, μ = mean activation; see DESIGN §2):
  lap     score P[e]
  lape    Tang et al. 2024: P̃ = P / Σ_e P, H = −Σ_e P̃ log P̃, q = the ⌈95 %⌉ k-th smallest P; H = +∞ where
          no emotion has P > q; keep the k lowest-H neurons (default fraction 0.01); assign each to every
          e with P[e] > q
  mad     μ[e] − mean_{e'≠e} μ[e']
  cas     μ[e] − max_{e'≠e} μ[e']
  grad    ``scores`` from :func:`attribution` (∂ log p(label e) / ∂ gain, at gain 1)
  random  for each emotion and layer, as many random neurons as ``like`` has there (seeded)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esn_jax import scoring
from esn_jax.stats import EmotionStats, model_dims

METHODS = ("lap", "lape", "mad", "cas", "random", "grad")
LAPE_FILTER_RATE = 0.95


def select(stats: EmotionStats, method: str, k: float | None = None, per_layer: bool = False, seed: int = 0, *,
           like=None, scores=None) -> np.ndarray:
    """A bool mask [E, L, I] of the neurons ``method`` assigns to each emotion.

    like: bool [E, L, I], the mask whose per-layer counts ``random`` matches. scores: float [E, L, I]
    for ``grad``. ``seed`` only affects ``random``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (choose from {METHODS})")
    e, layers, neurons = stats.num_emotions, stats.num_layers, stats.intermediate_size
    present = _present(stats)
    if method == "random":
        if like is None:
            raise ValueError("method='random' needs like=<bool mask [E, L, I]> to match its per-layer counts")
        return _random_like(_checked(like, (e, layers, neurons), "like"), present, seed)
    if method == "lape":
        return _lape(_per_token(stats, stats.count_pos), present,
                     _count(k if k is not None else 0.01, layers, neurons, per_layer), per_layer)
    if k is None:
        raise ValueError(f"method={method!r} needs k (a count or a fraction of the neurons)")
    count = _count(k, layers, neurons, per_layer)
    if method == "lap":
        score = _per_token(stats, stats.count_pos)
    elif method in ("mad", "cas"):
        score = _contrast(_per_token(stats, stats.sum), present, method)
    else:
        if scores is None:
            raise ValueError("method='grad' needs scores=<[E, L, I]> from esn_jax.selectors.attribution")
        score = np.asarray(_checked(scores, (e, layers, neurons), "scores"), np.float64)
        if not np.isfinite(score[present]).all():
            raise ValueError("grad scores contain NaN or inf")
    return _top_k(score, present, count, per_layer)


def _checked(arr, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise ValueError(f"{what} has shape {arr.shape}; the statistics' model needs [E, L, I] = {list(shape)}")
    return arr


def _per_token(stats: EmotionStats, total) -> np.ndarray:
    """total / tokens [E, L, I] in float64 (0 without tokens): exact divisions keep equal ratios tied."""
    tokens = np.asarray(stats.tokens, np.float64)[:, None, None]
    return np.asarray(total, np.float64) / np.maximum(tokens, 1)


def _present(stats: EmotionStats) -> np.ndarray:
    """Emotions with identification items and tokens [E] bool; warns about the others."""
    present = (np.asarray(stats.items) > 0) & (np.asarray(stats.tokens) > 0)
    missing = np.flatnonzero(~present).tolist()
    if missing:
        warnings.warn(f"emotions {missing} have no identification items or tokens; their masks are empty",
                      stacklevel=3)
    return present


def _count(k: float, layers: int, neurons: int, per_layer: bool) -> int:
    """k as a neuron count, per emotion (per layer when ``per_layer``)."""
    pool = neurons if per_layer else layers * neurons
    where = "per layer" if per_layer else "in the model"
    if isinstance(k, bool) or not np.isscalar(k) or not np.isfinite(k) or k <= 0:
        raise ValueError(f"k must be a positive count or a fraction in (0, 1); got {k!r}")
    if float(k) < 1:
        return max(1, round(float(k) * pool))
    if float(k) != int(k):
        raise ValueError(f"k={k} is neither a whole count nor a fraction in (0, 1)")
    if int(k) > pool:
        raise ValueError(f"k={int(k)} exceeds the {pool} neurons {where}")
    return int(k)


def _order(score: np.ndarray) -> np.ndarray:
    """Indices of a 1-D score, highest first, ties to the lower index."""
    return np.lexsort((np.arange(score.size), -score))


def _top_k(score: np.ndarray, present: np.ndarray, count: int, per_layer: bool) -> np.ndarray:
    e, layers, neurons = score.shape
    mask = np.zeros(score.shape, bool)
    for i in np.flatnonzero(present):
        if per_layer:
            for layer in range(layers):
                mask[i, layer, _order(score[i, layer])[:count]] = True
        else:
            mask[i].flat[_order(score[i].ravel())[:count]] = True
    return mask


def _contrast(mu: np.ndarray, present: np.ndarray, method: str) -> np.ndarray:
    idx = np.flatnonzero(present)
    if present.sum() < 2:
        raise ValueError(f"method={method!r} contrasts emotions and needs at least two with identification items; "
                         f"have {idx.tolist()}")
    score = np.zeros_like(mu)
    n, total = len(idx), mu[idx].sum(0)
    for i in idx:
        if method == "mad":
            # (n μ_e − Σ μ) / (n − 1) equals μ_e − mean of the others; it keeps exactly tied scores tied.
            score[i] = (n * mu[i] - total) / (n - 1)
        else:
            score[i] = mu[i] - mu[idx[idx != i]].max(0)
    return score


def _lape(prob: np.ndarray, present: np.ndarray, count: int, per_layer: bool) -> np.ndarray:
    p = prob[present]  # [E', L, I]
    if p.shape[0] == 0:
        return np.zeros(prob.shape, bool)
    total = p.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = np.where(total > 0, p / total, 0.0)
        entropy = -np.where(normed > 0, normed * np.log(normed), 0.0).sum(0)  # [L, I]
    flat = np.sort(p.ravel())
    q = flat[max(1, round(flat.size * LAPE_FILTER_RATE)) - 1]
    entropy = np.where((p > q).any(0), entropy, np.inf)
    kept = np.zeros(entropy.shape, bool)
    if per_layer:
        for layer in range(entropy.shape[0]):
            kept[layer, _order(-entropy[layer])[:count]] = True
    else:
        kept.flat[_order(-entropy.ravel())[:count]] = True
    mask = np.zeros(prob.shape, bool)
    mask[present] = kept[None] & (p > q)
    return mask


def _random_like(like: np.ndarray, present: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = like.astype(bool).sum(-1)  # [E, L]
    mask = np.zeros(like.shape, bool)
    for i in np.flatnonzero(present):
        for layer, n in enumerate(counts[i]):
            mask[i, layer, rng.choice(like.shape[-1], size=int(n), replace=False)] = True
    return mask


def attribution(module, params, batch: Mapping[str, Any], labels, label_token_ids: Sequence[Sequence[int]],
                num_emotions: int, site: str = "gate_act", item_mask=None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Gradient attribution of one batch: (grad_sum [E, L, I], items [E]).

    grad_sum[e] sums, over the items labelled e, ∂ log p(label e) / ∂ g where g [L, I] is a gain on every
    neuron at every position, taken at g = 1; one backward pass gives all neurons of all items (each
    item gets its own gain, so its gradient is its own). Sum over batches, then pass
    ``scores = grad_sum / items[:, None, None]`` to ``select(..., "grad", ...)``.
    """
    layers, neurons = model_dims(params)
    labels = jnp.asarray(labels, jnp.int32)
    item_mask = jnp.ones(labels.shape, bool) if item_mask is None else jnp.asarray(item_mask, bool)
    return _attribution(module, params, dict(batch), labels, scoring.label_tokens(label_token_ids), num_emotions,
                        site, layers, neurons, item_mask)


@functools.partial(jax.jit, static_argnames=("module", "label_token_ids", "num_emotions", "site", "layers",
                                             "neurons"))
def _attribution(module, params, batch, labels, label_token_ids, num_emotions, site, layers, neurons, item_mask):
    embedded = scoring.embed(module, params, batch)

    def total_logp(gains):  # gains [L, B, 1, I]
        logp = scoring.score_labels(module, params, embedded, label_token_ids, {site: {"scale": gains}})
        return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0] * item_mask)

    grads = jax.grad(total_logp)(jnp.ones((layers, labels.shape[0], 1, neurons), jnp.float32))[:, :, 0]
    onehot = jax.nn.one_hot(labels, num_emotions, dtype=jnp.float32) * item_mask[:, None]
    return jnp.einsum("be,lbi->eli", onehot, grads), onehot.sum(0).astype(jnp.int32)
