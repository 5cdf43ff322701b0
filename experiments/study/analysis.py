"""From the stages' predictions and masks to every number of results.json, and the verdict on each of the
paper's findings (DESIGN §1). All metrics come from :mod:`esn_jax.metrics`.

Shapes: N eval items, E emotions, S selectors, K ks, R random seeds, A alphas, L layers, I neurons.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as scipy_stats

from esn_jax import metrics

# Beyond this share of the plain-text prompts' tokens being the tokenizer's unknown token, the collateral loss
# scores that one token rather than language, and no verdict is drawn from it.
MAX_UNKNOWN_SHARE = 0.1
STRATEGIES = ("targeted", "union", "mix", "two_pass")  # agnostic injection, as reported


def num(x) -> float | None:
    """JSON-safe float (NaN -> None)."""
    x = float(x)
    return None if math.isnan(x) else x


def nanmean(values) -> float:
    """Mean over the defined values; NaN (no warning) when none is."""
    values = np.asarray(values, np.float64)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


def _list(a) -> list:
    return [_list(x) for x in a] if np.ndim(a) else num(a)


def classification(labels, preds, e: int) -> dict:
    """Accuracy, UAR, macro-F1, recall and confusion; ``unparsed``: the share of answers that named no label (free
    form; always 0 when labels are scored), each counted wrong and in no column of the confusion matrix."""
    return {"accuracy": num(metrics.accuracy(labels, preds)), "uar": num(metrics.uar(labels, preds, e)),
            "macro_f1": num(metrics.macro_f1(labels, preds, e)), "recall": _list(metrics.recall(labels, preds, e)),
            "confusion": metrics.confusion(labels, preds, e).tolist(),
            "unparsed": num(np.mean(np.asarray(preds) == metrics.NO_CLASS))}


def mean_specificity(labels, clean, masked, e: int) -> float:
    """Mean over emotions of self − cross; masked [N, E] (items first, so the bootstrap resamples rows)."""
    delta = metrics.deactivation_matrix(labels, clean, masked.T, e)
    return float(np.nanmean(metrics.specificity(delta)["specificity"]))


def _quiet_nanmean(x, axis):
    with warnings.catch_warnings():  # an all-NaN slice is NaN, as the scalar metrics give
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _ci(samples) -> list:
    """The 95 % percentile interval of bootstrap samples [B] (None where undefined), rounded to 1e-12: the samples
    are means of recall differences, whose float sums land ±1e-17 around an exact 0, and a rule asking for a CI
    below 0 must not be decided by that rounding."""
    tail = (1 - 0.95) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [num(round(q, 12)) for q in np.nanquantile(np.asarray(samples, np.float64), [tail, 1 - tail])]


def resamples(n: int, cfg) -> np.ndarray:
    """[bootstrap, n] item indices drawn with replacement (the draws of :func:`esn_jax.metrics.bootstrap_ci`)."""
    return np.random.default_rng(cfg.seed).integers(0, n, (cfg.bootstrap, n))


def recall_samples(labels, preds, e: int) -> np.ndarray:
    """labels [B, N], preds [..., B, N] -> recall [..., B, C] of every resample (NaN for a class without items)."""
    onehot = labels[..., None] == np.arange(e)  # [B, N, C]
    hits = ((preds == labels)[..., None] & onehot).sum(-2)
    support = onehot.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / support, np.nan)


def specificity_samples(labels, clean, masked, e: int, idx) -> dict[str, np.ndarray]:
    """Mean self, cross and self − cross over emotions [B] for every resample idx [B, N]; masked [E, N] (row m =
    emotion m's mask ablated), as :func:`esn_jax.metrics.specificity` defines them."""
    lab = labels[idx]
    delta = recall_samples(lab, masked[:, idx], e) - recall_samples(lab, clean[idx], e)  # [E, B, C]
    delta = np.moveaxis(delta, 0, 1)  # [B, E(mask), C(label)]
    self_ = np.diagonal(delta, axis1=1, axis2=2)
    cross = _quiet_nanmean(np.where(np.eye(e, dtype=bool), np.nan, delta), -1)
    return {"self": _quiet_nanmean(self_, -1), "cross": _quiet_nanmean(cross, -1),
            "specificity": _quiet_nanmean(self_ - cross, -1)}


def deactivation(labels, clean, preds, e: int, cfg) -> dict:
    """preds [1 + R, E, N] for one selector and k: the ESN masks (0) and their random controls. The CIs are
    percentile bootstraps over the items; the random controls are reported per seed (their spread) and averaged."""
    esn_delta = metrics.deactivation_matrix(labels, clean, preds[0], e)
    spec = metrics.specificity(esn_delta)
    random_deltas = [metrics.deactivation_matrix(labels, clean, p, e) for p in preds[1:]]
    random_parts = [metrics.specificity(d) for d in random_deltas]
    boot = specificity_samples(labels, clean, preds[0], e, resamples(len(labels), cfg))
    point = float(np.nanmean(spec["specificity"]))
    random_spec = [float(np.nanmean(p["specificity"])) for p in random_parts]
    # Per item: correct under its own label's mask, ESN vs the mean over random controls.
    own = np.arange(len(labels))
    esn_correct = preds[0][labels, own] == labels
    random_correct = np.mean([p[labels, own] == labels for p in preds[1:]], axis=0)
    rnd_spec = metrics.specificity(np.mean(random_deltas, axis=0))
    return {
        "delta": _list(esn_delta), "self": _list(spec["self"]), "cross": _list(spec["cross"]),
        "specificity": _list(spec["specificity"]), "mean_self": num(np.nanmean(spec["self"])),
        "mean_cross": num(np.nanmean(spec["cross"])), "mean_specificity": num(point), "ci": _ci(boot["specificity"]),
        "ci_self": _ci(boot["self"]), "ci_cross": _ci(boot["cross"]),
        "random": {"delta": _list(np.mean(random_deltas, axis=0)), "mean_self": num(np.nanmean(rnd_spec["self"])),
                   "mean_cross": num(np.nanmean(rnd_spec["cross"])), "specificity_per_seed": _list(random_spec),
                   "self_per_seed": [num(np.nanmean(p["self"])) for p in random_parts],
                   "cross_per_seed": [num(np.nanmean(p["cross"])) for p in random_parts],
                   "mean_specificity": num(np.mean(random_spec))},
        "p_empirical": num(metrics.empirical_p(point, random_spec, "less")),
        "p_permutation": num(metrics.paired_permutation_test(esn_correct, random_correct, cfg.permutations, cfg.seed)),
    }


def steering_samples(labels, preds, e: int) -> np.ndarray:
    """labels [B, N], preds [..., E, B, N] (row t = target t's mask) -> steering rate toward each target
    [..., E, B]: the share of items labelled otherwise that are predicted as t."""
    target = np.arange(e)[:, None, None]
    other = labels != target  # [E, B, N]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((preds == target) & other).sum(-1) / other.sum(-1)


def steering(labels, clean, esn, rnd, alphas, cfg) -> dict:
    """esn [A, E, N] (gain α on each emotion's ESNs), rnd [R, E, N] (each random control at the largest α) ->
    steering rates per emotion and α (α = 0 is the clean model), their bootstrap CIs, and the gap ESN − random at
    the largest α against each random control with its CI."""
    e = esn.shape[1]
    grid = [0.0, *alphas]
    idx = np.concatenate([np.arange(len(labels))[None], resamples(len(labels), cfg)])  # row 0: the items as drawn
    lab = labels[idx]
    clean_rates = steering_samples(lab, np.broadcast_to(clean[idx], (e, *idx.shape)), e)  # [E, 1 + B]
    rates = np.concatenate([clean_rates[None], steering_samples(lab, esn[..., idx], e)])  # [1 + A, E, 1 + B]
    random_rates = steering_samples(lab, rnd[..., idx], e)  # [R, E, 1 + B]
    mean_esn = _quiet_nanmean(rates, 1)  # [1 + A, 1 + B]
    gaps = _quiet_nanmean(rates[-1][None] - random_rates, 1)  # [R, 1 + B]
    rho = (scipy_stats.spearmanr(grid, mean_esn[:, 0]).statistic if np.ptp(mean_esn[:, 0]) > 0
           else float("nan"))
    # Per item, the share of its other emotions it was moved to at the largest α: ESNs vs the controls' mean.
    other = labels[None] != np.arange(e)[:, None]  # [E, N]
    with np.errstate(invalid="ignore"):
        moved_esn = ((esn[-1] == np.arange(e)[:, None]) & other).sum(0) / other.sum(0)
        moved_rnd = ((rnd == np.arange(e)[:, None]) & other).sum(1).mean(0) / other.sum(0)
    p = metrics.paired_permutation_test(moved_esn, moved_rnd, cfg.permutations, cfg.seed) if len(labels) else None
    return {"alphas": grid, "esn": _list(rates[..., 0].T), "mean_esn": _list(mean_esn[:, 0]),
            "esn_ci": [_ci(m[1:]) for m in mean_esn], "random_at_max_alpha": _list(random_rates[..., 0]),
            "mean_random_per_seed": _list(_quiet_nanmean(random_rates[..., 0], 1)),
            "mean_random": num(np.nanmean(random_rates[..., 0])), "spearman": num(rho),
            "gap_per_seed": _list(gaps[:, 0]), "gap_ci_per_seed": [_ci(g[1:]) for g in gaps],
            "p_permutation": None if p is None else num(p)}


def costs(r: dict, ev_costs: dict, names, ks, main_k: int) -> None:
    """Adds each scored intervention's costs at the answer position under the first prompt, beside its constrained
    numbers in ``r``: ``label_mass`` (the total probability on the label words, mean over items and masks) and ``kl``
    (KL(clean ‖ intervened), the same mean). ev_costs: :attr:`Evidence.costs`."""
    def mean(x, i):
        return num(np.mean(np.asarray(x, np.float64)[..., i]))
    mass = mean(ev_costs["clean_mass"][0][..., None], 0)
    r["clean"]["label_mass"] = mass
    deact, steer, rnd, agn = (ev_costs[k][0] for k in ("deactivate", "steer", "steer_random", "agnostic"))
    for s, name in enumerate(names):
        for j, k in enumerate(ks):
            d = r["selectors"][name]["k"][k]["deactivation"]
            d["label_mass"], d["kl"] = mean(deact[s, j, 0], 1), mean(deact[s, j, 0], 0)
            d["random"]["label_mass"], d["random"]["kl"] = mean(deact[s, j, 1:], 1), mean(deact[s, j, 1:], 0)
        v = r["steering"][name]
        v["label_mass"] = [mass, *(mean(steer[s, a], 1) for a in range(steer.shape[1]))]
        v["kl"] = [0.0, *(mean(steer[s, a], 0) for a in range(steer.shape[1]))]
        v["random_label_mass"], v["random_kl"] = mean(rnd[s], 1), mean(rnd[s], 0)
        for i, strategy in enumerate(("union", "mix")):
            a_ = r["agnostic"][name][strategy]
            a_["label_mass"] = [mean(agn[s, i, a], 1) for a in range(agn.shape[2])]
            a_["kl"] = [mean(agn[s, i, a], 0) for a in range(agn.shape[2])]
            if "agnostic_damage" in ev_costs:
                a_["text_damage"] = [num(x) for x in ev_costs["agnostic_damage"][s, i]]


def agnostic_preds(labels, clean, steer, union_mix) -> np.ndarray:
    """[4, A, N] predictions of targeted, Union, Mix and 2-Pass injection (:data:`STRATEGIES`) for one
    selector: steer [A, E, N] (each emotion's mask at each α: targeted picks the item's label's row, 2-Pass its
    clean prediction's; a clean answer that named no emotion gets no mask, so it stays as it was), union_mix
    [2, A, N]."""
    items = np.arange(len(labels))
    two_pass = np.where(clean == metrics.NO_CLASS, clean, steer[:, np.maximum(clean, 0), items])
    return np.stack([steer[:, labels, items], union_mix[0], union_mix[1], two_pass])


def agnostic(labels, clean, preds, alphas, e: int, strategies) -> dict:
    """preds [4, A, N] -> UAR and ΔUAR (vs clean) for each strategy and α."""
    base = metrics.uar(labels, clean, e)
    out = {"clean_uar": num(base)}
    for j, name in enumerate(strategies):
        uars = [metrics.uar(labels, preds[j, a], e) for a in range(len(alphas))]
        out[name] = {"uar": _list(uars), "delta_uar": _list(np.array(uars) - base)}
    return out


def overlaps(masks_main, selectors) -> dict:
    """masks_main [S, E, L, I] -> Jaccard between selectors (mean over emotions) and between emotions."""
    s = len(selectors)
    between = np.array([[nanmean([metrics.jaccard(masks_main[i, t], masks_main[j, t])
                                     for t in range(masks_main.shape[1])]) for j in range(s)] for i in range(s)])
    return {"selectors": _list(between),
            "emotions": {name: _list(metrics.jaccard_matrix(masks_main[i], masks_main[i]))
                         for i, name in enumerate(selectors)}}


def layer_summary(hist) -> dict:
    """hist [L] -> the share of neurons in the ⌈L/4⌉ busiest layers, and those layers."""
    hist = np.asarray(hist, np.float64)
    top = max(1, math.ceil(len(hist) / 4))
    order = np.argsort(-hist, kind="stable")[:top]
    total = hist.sum()
    return {"top_layers": sorted(int(i) for i in order),
            "top_share": num(hist[order].sum() / total) if total else None, "uniform_share": top / len(hist)}


def interventions(labels, clean, deact, steer, steer_random, union_mix, names, alphas, e: int, cfg) -> dict:
    """Every intervention summary of one prompt's predictions at one k, per selector: clean [N], deact
    [S, 1 + R, E, N], steer [S, A, E, N], steer_random [S, R, E, N], union_mix [S, 2, A, N]."""
    return {"clean": classification(labels, clean, e),
            "deactivation": {m: deactivation(labels, clean, deact[s], e, cfg) for s, m in enumerate(names)},
            "steering": {m: steering(labels, clean, steer[s], steer_random[s], alphas, cfg)
                         for s, m in enumerate(names)},
            "agnostic": {m: agnostic(labels, clean, agnostic_preds(labels, clean, steer[s], union_mix[s]), alphas, e,
                                     STRATEGIES) for s, m in enumerate(names)}}


def transfer(labels, clean, preds, masks_a, masks_b, names, e: int) -> dict:
    """Masks selected on one source, ablated where another was selected (another dataset, or another prompt):
    preds [S, 2, E, N] (the transferred masks, then the target's own), masks_a / masks_b [S, E, L, I]."""
    out = {}
    for s, m in enumerate(names):
        own = mean_specificity(labels, clean, preds[s, 1].T, e)
        moved = mean_specificity(labels, clean, preds[s, 0].T, e)
        overlap = nanmean([metrics.jaccard(masks_a[s, t], masks_b[s, t]) for t in range(e)])
        out[m] = {"specificity_transferred": num(moved), "specificity_own": num(own),
                  "ratio": num(moved / own) if own < 0 else None, "jaccard": num(overlap)}
    return out


def transfer_result(dataset: str, labels, clean, preds, masks_a, masks_b, names, e: int) -> dict:
    """:func:`transfer` to another dataset, with its clean evaluation and the selector whose own masks are the most
    specific there (finding 6b reads its ratio)."""
    out = {"dataset": dataset, "eval_items": int(len(labels)), "clean": classification(labels, clean, e),
           "selectors": transfer(labels, clean, preds, masks_a, masks_b, names, e)}
    out["best"] = min(out["selectors"], key=lambda m: out["selectors"][m]["specificity_own"] or 0.0)
    return out


def prompt_transfer(labels, clean, preds, prompt_masks, names, prompts, e: int) -> dict:
    """Neurons selected under one prompt, ablated under another: clean [P, N], preds [P (under), P (selected on),
    S, E, N], prompt_masks [P, S, E, L, I]. Every ordered pair of prompts, and per selector the means over pairs."""
    pairs = []
    for q, under in enumerate(prompts):
        for p, source in enumerate(prompts):
            if p != q:
                both = np.stack([preds[q, p], preds[q, q]], 1)  # [S, 2, E, N]
                moved = transfer(labels, clean[q], both, prompt_masks[p], prompt_masks[q], names, e)
                pairs.append({"selected_on": source, "under": under, "selectors": moved})
    summary = {m: {key: num(nanmean([np.nan if pr["selectors"][m][key] is None else pr["selectors"][m][key]
                                     for pr in pairs]))
                   for key in ("specificity_own", "specificity_transferred", "ratio", "jaccard")} for m in names}
    return {"pairs": pairs, "selectors": summary}


def less(a, b) -> bool:
    """a < b, both defined."""
    return a is not None and b is not None and a < b


def emotion_specific(d: dict) -> bool:
    """Finding 1's rule on one :func:`deactivation` result: the 95% CI of the mean self − cross is below 0 and
    the mean is below every random control's."""
    return d["ci"][1] is not None and d["ci"][1] < 0 and less(d["mean_specificity"],
                                                              min(d["random"]["specificity_per_seed"]))


def collateral(r: dict, clean, masked, unknown_share: float) -> dict:
    """Beyond the paper: what ablating each mask costs the frozen LM on plain text.

    clean [P], masked [S, K, 1 + R, E, P]: next-token loss per prompt (nats/token). Δloss = masked − clean,
    averaged over the prompts, per selector, k and emotion, for the ESN masks and each random control. A
    selector's set at a k is *specific* when its ablation is emotion-specific (:func:`emotion_specific`, on
    ``r``'s deactivation results) and its mean Δloss over emotions is at most the largest random control's.
    Not judged (None) when the tokenizer maps more than ``MAX_UNKNOWN_SHARE`` of the tokens to its unknown token.
    """
    base = float(np.mean(clean))
    delta = np.mean(masked, axis=-1) - base  # [S, K, 1 + R, E]
    measured = unknown_share <= MAX_UNKNOWN_SHARE
    out = {"prompts": int(np.shape(clean)[0]), "clean_loss": num(base), "unknown_share": num(unknown_share),
           "measured": bool(measured), "selectors": {}}
    for s, name in enumerate(r["selectors"]):
        out["selectors"][name] = {"k": {}}
        for j, (k, v) in enumerate(r["selectors"][name]["k"].items()):
            d = delta[s, j]
            per_seed = d[1:].mean(-1)  # [R]
            hurts, spares = emotion_specific(v["deactivation"]), bool(d[0].mean() <= per_seed.max())
            out["selectors"][name]["k"][k] = {
                "delta_esn": _list(d[0]), "delta_random": _list(d[1:]), "delta_random_mean": _list(d[1:].mean(0)),
                "mean_esn": num(d[0].mean()), "mean_random": num(per_seed.mean()), "max_random": num(per_seed.max()),
                "emotion_specific": hurts, "spares_language": spares if measured else None,
                "specific": hurts and spares if measured else None}
    main = {name: v["k"][r["main_k"]]["specific"] for name, v in out["selectors"].items()}
    out["specific_at_main_k"] = [name for name, ok in main.items() if ok] if measured else None
    return out
