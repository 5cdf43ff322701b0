"""From the stages' predictions and masks to every number of results.json, and the verdict on each of the
paper's findings (DESIGN §1). All metrics come from :mod:`esn_jax.metrics`.

Shapes: N eval items, E emotions, S selectors, K ks, R random seeds, A alphas, L layers, I neurons.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from esn_jax import metrics

ALPHA_LEVEL = 0.05
# Steering must move at least this share of predictions more than its random control to count: a CI just
# above 0 on a one-point shift is not the paper's "pushes predictions toward e".
MIN_STEERING_GAP = 0.05
# Beyond this share of the plain-text prompts' tokens being the tokenizer's unknown token, the collateral loss
# scores that one token rather than language, and no verdict is drawn from it.
MAX_UNKNOWN_SHARE = 0.1


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
    return {"accuracy": num(metrics.accuracy(labels, preds)), "uar": num(metrics.uar(labels, preds, e)),
            "macro_f1": num(metrics.macro_f1(labels, preds, e)), "recall": _list(metrics.recall(labels, preds, e)),
            "confusion": metrics.confusion(labels, preds, e).tolist()}


def mean_specificity(labels, clean, masked, e: int) -> float:
    """Mean over emotions of self − cross; masked [N, E] (items first, so the bootstrap resamples rows)."""
    delta = metrics.deactivation_matrix(labels, clean, masked.T, e)
    return float(np.nanmean(metrics.specificity(delta)["specificity"]))


def deactivation(labels, clean, preds, e: int, cfg) -> dict:
    """preds [1 + R, E, N] for one selector and k: the ESN masks (0) and their random controls."""
    esn_delta = metrics.deactivation_matrix(labels, clean, preds[0], e)
    spec = metrics.specificity(esn_delta)
    random_deltas = [metrics.deactivation_matrix(labels, clean, p, e) for p in preds[1:]]
    random_spec = [float(np.nanmean(metrics.specificity(d)["specificity"])) for d in random_deltas]
    point, low, high = metrics.bootstrap_ci(lambda lab, c, m: mean_specificity(lab, c, m, e), labels, clean,
                                            preds[0].T, num_samples=cfg.bootstrap, seed=cfg.seed)
    # Per item: correct under its own label's mask, ESN vs the mean over random controls.
    own = np.arange(len(labels))
    esn_correct = preds[0][labels, own] == labels
    random_correct = np.mean([p[labels, own] == labels for p in preds[1:]], axis=0)
    rnd_spec = metrics.specificity(np.mean(random_deltas, axis=0))
    return {
        "delta": _list(esn_delta), "self": _list(spec["self"]), "cross": _list(spec["cross"]),
        "specificity": _list(spec["specificity"]), "mean_self": num(np.nanmean(spec["self"])),
        "mean_cross": num(np.nanmean(spec["cross"])), "mean_specificity": num(point), "ci": [num(low), num(high)],
        "random": {"delta": _list(np.mean(random_deltas, axis=0)), "mean_self": num(np.nanmean(rnd_spec["self"])),
                   "mean_cross": num(np.nanmean(rnd_spec["cross"])), "specificity_per_seed": _list(random_spec),
                   "mean_specificity": num(np.mean(random_spec))},
        "p_empirical": num(metrics.empirical_p(point, random_spec, "less")),
        "p_permutation": num(metrics.paired_permutation_test(esn_correct, random_correct, cfg.permutations, cfg.seed)),
    }


def steering(labels, clean, preds, alphas, cfg) -> dict:
    """preds [2, A, E, N] (ESN, random) -> steering rates per emotion and α, α = 0 being the clean model."""
    e = preds.shape[2]
    grid = [0.0, *alphas]

    def curves(p):  # [E, 1 + A]
        return np.array([[metrics.steering_rate(labels, clean, t)]
                         + [metrics.steering_rate(labels, p[a, t], t) for a in range(len(alphas))] for t in range(e)])

    esn, rnd = curves(preds[0]), curves(preds[1])
    mean_esn, mean_rnd = np.nanmean(esn, 0), np.nanmean(rnd, 0)
    rho = scipy_stats.spearmanr(grid, mean_esn).statistic if np.ptp(mean_esn) > 0 else float("nan")

    def gap(lab, pe, pr):  # mean over targets of the ESN − random steering rate at the largest α
        return float(np.nanmean([metrics.steering_rate(lab, pe[:, t], t) - metrics.steering_rate(lab, pr[:, t], t)
                                 for t in range(e)]))
    point, low, high = metrics.bootstrap_ci(gap, labels, preds[0, -1].T, preds[1, -1].T, num_samples=cfg.bootstrap,
                                            seed=cfg.seed)
    return {"alphas": grid, "esn": _list(esn), "random": _list(rnd), "mean_esn": _list(mean_esn),
            "mean_random": _list(mean_rnd), "spearman": num(rho), "gap_at_max_alpha": num(point),
            "gap_ci": [num(low), num(high)]}


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


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def verdict(ok: bool | None) -> str:
    return "not tested" if ok is None else ("holds" if ok else "does not hold")


def _lt(a, b) -> bool:
    return a is not None and b is not None and a < b


def emotion_specific(d: dict) -> bool:
    """Finding 1's rule on one :func:`deactivation` result: the 95% CI of the mean self − cross is below 0 and
    the mean is below every random control's."""
    return d["ci"][1] is not None and d["ci"][1] < 0 and _lt(d["mean_specificity"],
                                                              min(d["random"]["specificity_per_seed"]))


def findings(r: dict, main_k: str) -> list[dict]:
    """One entry per DESIGN §1 claim: verdict and the figures behind it."""
    sel = r["selectors"]
    deact = {s: sel[s]["k"][main_k]["deactivation"] for s in sel}
    specific = {s: emotion_specific(d) for s, d in deact.items()}
    best = min(deact, key=lambda s: deact[s]["mean_specificity"] if deact[s]["mean_specificity"] is not None
               else math.inf)
    d = deact[best]
    out = []

    def add(fid, claim, ok, evidence, figures):
        out.append({"id": fid, "claim": claim, "verdict": verdict(ok), "evidence": evidence, "figures": figures})

    add("1", "Emotion-sensitive neurons exist", any(specific.values()),
        f"selectors whose ablation is emotion-specific beyond every random control (k={main_k}, 95% CI of mean "
        f"self − cross below 0): {[s for s, v in specific.items() if v] or 'none'}",
        ["deactivation_bars.png"])
    paper = [s for s in ("lap", "lape", "mad", "cas") if s in deact]
    ranking = sorted(deact, key=lambda s: deact[s]["mean_specificity"] if deact[s]["mean_specificity"] is not None
                     else math.inf)
    add("2", "The four selectors (LAP, LAPE, MAD, CAS) each find emotion-specific neurons",
        all(specific[s] for s in paper) if paper else None,
        "mean specificity by selector (most specific first): "
        + ", ".join(f"{s} {deact[s]['mean_specificity']:+.3f}" for s in ranking if deact[s]["mean_specificity"]
                    is not None), ["deactivation_bars.png"] + [f"deactivation_{s}.png" for s in sel])
    add("3", "Self-deactivation hurts the target emotion more than others, beyond random controls",
        bool(d["ci"][1] is not None and d["ci"][1] < 0 and _lt(d["mean_self"], d["random"]["mean_self"])
             and d["p_permutation"] is not None and d["p_permutation"] < ALPHA_LEVEL),
        f"best selector {best}: mean self Δ {_fmt(d['mean_self'], '+.3f')} vs cross {_fmt(d['mean_cross'], '+.3f')} "
        f"(random controls: self {_fmt(d['random']['mean_self'], '+.3f')}, cross "
        f"{_fmt(d['random']['mean_cross'], '+.3f')}); "
        f"specificity {_fmt(d['mean_specificity'], '+.3f')}, 95% CI [{_fmt(d['ci'][0], '+.3f')}, "
        f"{_fmt(d['ci'][1], '+.3f')}]; paired permutation p = {_fmt(d['p_permutation'], '.3g')} (ESN vs random on "
        "each item's own emotion)",
        [f"deactivation_{best}.png", "deactivation_bars.png"])
    steer = r["steering"]
    steers = {s: v["spearman"] is not None and v["spearman"] > 0 and v["gap_ci"][0] is not None
              and v["gap_ci"][0] > 0 and v["gap_at_max_alpha"] >= MIN_STEERING_GAP for s, v in steer.items()}
    rows = [f"{s}: rate {_fmt(v['mean_esn'][0], '.2f')} → {_fmt(v['mean_esn'][-1], '.2f')} at α {v['alphas'][-1]:g} "
            f"(random {_fmt(v['mean_random'][-1], '.2f')}), Spearman ρ {_fmt(v['spearman'], '+.2f')}, gap CI "
            f"[{_fmt(v['gap_ci'][0], '+.2f')}, {_fmt(v['gap_ci'][1], '+.2f')}]" for s, v in steer.items()]
    add("4", "Gain on the selected neurons steers predictions toward the emotion, with a dose response",
        any(steers.values()),
        f"holds where Spearman ρ over α > 0 and ESN − random at max α ≥ {MIN_STEERING_GAP} with its CI above 0: "
        f"{[s for s, v in steers.items() if v] or 'none'}. " + "; ".join(rows),
        ["steering.png"])
    agn = r["agnostic"]
    strategies = ("targeted", "union", "mix", "two_pass")
    best_gain = {s: {a: max((x for x in v[a]["delta_uar"] if x is not None), default=None) for a in strategies}
                 for s, v in agn.items()}
    weaker = {s: all(_lt(b[a], b["targeted"]) for a in strategies[1:]) for s, b in best_gain.items()}
    add("5", "Label-free injection (Union, Mix, 2-Pass) is weaker than targeted injection",
        sum(weaker.values()) > len(weaker) / 2,
        "best ΔUAR over α, targeted vs Union / Mix / 2-Pass: " + "; ".join(
            f"{s}: " + " vs ".join(_fmt(b[a], "+.3f") for a in strategies) for s, b in best_gain.items()),
        ["agnostic.png"])
    lay = r["layers"]["summary"]
    # Clustered: the busiest quarter of the layers holds at least half of the neurons and 1.5× its uniform share
    # (with 2 layers, one of them holding 51 % is no cluster).
    need = max(0.5, 1.5 * lay["uniform_share"])
    add("6a", "ESNs cluster in a few layer bands",
        lay["top_share"] is not None and lay["top_share"] >= need,
        f"the {len(lay['top_layers'])} busiest layers {lay['top_layers']} hold {lay['top_share'] or 0:.0%} of the "
        f"selected neurons (uniform: {lay['uniform_share']:.0%}; clustered from {need:.0%}); paper: layers 0, 6–8, "
        "19–22 of 28",
        ["layers.png"])
    tr = r.get("transfer")
    if tr is None:
        add("6b", "Cross-dataset transfer is partial", None,
            "one dataset configured (set transfer_dataset=... to test it)", [])
    else:
        ratio = tr["selectors"][tr["best"]]["ratio"]
        add("6b", "Cross-dataset transfer is partial", ratio is not None and 0 < ratio < 1,
            f"{tr['dataset']}: specificity with masks selected on {r['data']['dataset']} / with its own masks = "
            + "; ".join(f"{s} {_fmt(v['ratio'], '.2f')}"
                        for s, v in tr["selectors"].items()), ["transfer.png"])
    return out


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
