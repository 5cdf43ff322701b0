"""The paper's findings (DESIGN §1): each one's rule, applied once to the items as drawn (the point verdict) and
in every cell of a stability grid, whose share of cells where the rule holds gives the verdict.

The rules and the grid are fixed here, before any result: a finding **holds** when its rule holds in at least
:data:`HOLDS_FROM` of the grid's cells, is **fragile** from :data:`FRAGILE_FROM` up to that, and **does not hold**
below. A cell is one random-control seed alone × one prompt × one stratified resample of the evaluation items.

A finding that asks whether *some* selector does something (1, 3 and 4) names its selector: each selector is
counted over the grid alone, the finding holds through a selector only when that selector's count reaches the
threshold, and the choice among selectors is paid for: a selector reaches **holds** only when its point test
survives Holm's correction over the selectors (:func:`holm`; otherwise it is at most **fragile**). The verdict is
the best selector's, and the report names it.

Finding 4 is judged on the model's free answers first (:mod:`experiments.study.steering.score`: the steering
score, α chosen on held-out items, random controls at matched cost); the constrained ranking of label words, the
paper's way, keeps its own verdict beside it (``constrained``).
"""

from __future__ import annotations

import math

import numpy as np

from configs.study import parse_list
from experiments.study import analysis, steering
from experiments.study.analysis import STRATEGIES, emotion_specific, less
from experiments.study.evidence import Evidence, preds

ALPHA_LEVEL = 0.05
# Steering must move at least this share of predictions more than its random control to count: a CI just
# above 0 on a one-point shift is not the paper's "pushes predictions toward e".
MIN_STEERING_GAP = 0.05
HOLDS_FROM, FRAGILE_FROM = 0.8, 0.2
FINDINGS = ("1", "2", "3", "4", "5", "6a", "6b")
CONSTRAINED = "4c"  # finding 4 by the constrained ranking, reported inside finding 4
PER_SELECTOR = {"1", "3", "4", CONSTRAINED}  # "some selector" findings: counted per selector
# The grid's axes each finding's rule reads: the random controls (seeds), the prompts and the evaluation items
# (finding 4: the free-form items of the reported half). 6a reads no evaluation item: its resamples draw the
# selected masks (each selector's emotions) instead.
USES_SEEDS = {"1", "2", "3", "4", CONSTRAINED}
RANK = {"holds": 3, "fragile": 2, "does not hold": 1, "not tested": 0}
RULE = ("How to read a verdict (the rule was fixed before any result): each finding's rule is applied once to the "
        "items as drawn, under the first prompt, against every random control (the point verdict), and again in "
        "every cell of a stability grid: each random-control seed alone × each prompt × {resamples} resamples of the "
        "evaluation items, drawn with replacement within each emotion (findings 5 and 6b use no random control: "
        "prompts × resamples; 6a: each prompt's own selection, or the pooled one with one prompt, × resamples of "
        "the selected masks). A finding **holds** when its rule holds in at least {holds:.0%} of its cells, is "
        "**fragile** from {fragile:.0%} up to that, and **does not hold** below {fragile:.0%}. Findings 1, 3 and 4 ask "
        "whether some selector does something: each selector is counted alone, the finding holds through a selector "
        "only when that selector's own count reaches the threshold and its point test survives Holm's correction "
        "over the selectors (else it is at most fragile), and the verdict names the selector. Finding 4 is judged on "
        "the model's free answers (steering score at the α chosen on held-out items, random controls at matched "
        "plain-text damage); the constrained ranking of label words keeps its own verdict beside it.")


def spread(values, spec: str) -> str:
    """Random controls' values: their mean and, with several seeds, their range."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(float(np.mean(vals)), spec)} [{format(min(vals), spec)}, {format(max(vals), spec)}]"


def steers_beyond_random(v: dict) -> bool:
    """Finding 4's rule on one :func:`analysis.steering` result: a dose response (Spearman ρ over α > 0) and, against
    every random control, a gap at the largest α of at least :data:`MIN_STEERING_GAP` with its CI above 0."""
    return (v["spearman"] is not None and v["spearman"] > 0 and bool(v["gap_per_seed"])
            and all(g is not None and g >= MIN_STEERING_GAP and c[0] is not None and c[0] > 0
                    for g, c in zip(v["gap_per_seed"], v["gap_ci_per_seed"], strict=True)))


def steers_free(v: dict) -> bool:
    """Finding 4's free-form rule on one selector's :func:`experiments.study.steering.selector_result` (or a grid
    cell's): against every random control at matched cost, the reported half's steering score gap ESN − control is
    at least :data:`MIN_STEERING_GAP` with its 95 % CI above 0."""
    return bool(v["gap_per_seed"]) and all(
        g is not None and g >= MIN_STEERING_GAP and c[0] is not None and c[0] > 0
        for g, c in zip(v["gap_per_seed"], v["gap_ci_per_seed"], strict=True))


def deactivates(d: dict) -> bool:
    """Finding 3's rule on one :func:`analysis.deactivation` result: the specificity's CI below 0, self below the
    random controls' and the paired permutation test below :data:`ALPHA_LEVEL`."""
    return bool(d["ci"][1] is not None and d["ci"][1] < 0 and less(d["mean_self"], d["random"]["mean_self"])
                and d["p_permutation"] is not None and d["p_permutation"] < ALPHA_LEVEL)


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjusted p-values {name: p} (None stays None and is not counted among the tests)."""
    known = sorted((p, name) for name, p in pvalues.items() if p is not None)
    out, running = dict.fromkeys(pvalues), 0.0
    for i, (p, name) in enumerate(known):
        running = max(running, min(1.0, (len(known) - i) * p))
        out[name] = running
    return out


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def verdict(ok: bool | None) -> str:
    return "not tested" if ok is None else ("holds" if ok else "does not hold")


def findings(r: dict, main_k: str) -> list[dict]:
    """One entry per DESIGN §1 claim: verdict and the figures behind it; the "some selector" findings
    (:data:`PER_SELECTOR`) also carry ``per_selector`` {selector: the rule holds} and ``p`` {selector: its point
    test's p-value}."""
    sel = r["selectors"]
    deact = {s: sel[s]["k"][main_k]["deactivation"] for s in sel}
    specific = {s: emotion_specific(d) for s, d in deact.items()}
    out = []

    def add(fid, claim, ok, evidence, figures, **extra):
        out.append({"id": fid, "claim": claim, "verdict": verdict(ok), "evidence": evidence, "figures": figures,
                    **extra})

    p_deact = {s: d["p_permutation"] for s, d in deact.items()}
    add("1", "Emotion-sensitive neurons exist", any(specific.values()),
        f"selectors whose ablation is emotion-specific beyond every random control (k={main_k}, 95% CI of mean "
        f"self − cross below 0): {[s for s, v in specific.items() if v] or 'none'}",
        ["deactivation_bars.png"], per_selector=specific, p=p_deact)
    paper = [s for s in ("lap", "lape", "mad", "cas") if s in deact]
    ranking = sorted(deact, key=lambda s: deact[s]["mean_specificity"] if deact[s]["mean_specificity"] is not None
                     else math.inf)
    add("2", "The four selectors (LAP, LAPE, MAD, CAS) each find emotion-specific neurons",
        all(specific[s] for s in paper) if paper else None,
        "mean specificity by selector (most specific first): "
        + ", ".join(f"{s} {deact[s]['mean_specificity']:+.3f}" for s in ranking if deact[s]["mean_specificity"]
                    is not None), ["deactivation_bars.png"] + [f"deactivation_{s}.png" for s in sel])
    third = {s: deactivates(d) for s, d in deact.items()}
    add("3", "Self-deactivation hurts the target emotion more than others, beyond random controls",
        any(third.values()),
        "; ".join(f"{s}: mean self Δ {_fmt(d['mean_self'], '+.3f')} vs cross {_fmt(d['mean_cross'], '+.3f')} "
                  f"(random self {spread(d['random']['self_per_seed'], '+.3f')}), specificity "
                  f"{_fmt(d['mean_specificity'], '+.3f')} [{_fmt(d['ci'][0], '+.3f')}, {_fmt(d['ci'][1], '+.3f')}], "
                  f"p_perm {_fmt(d['p_permutation'], '.3g')}" for s, d in deact.items()),
        [f"deactivation_{s}.png" for s in sel] + ["deactivation_bars.png"], per_selector=third, p=p_deact)
    free = r.get("steering_free")
    claim4 = "Gain on the selected neurons steers the model toward the emotion"
    if free is None:
        add("4", claim4, None, "free-form steering not run", [])
    else:
        steers = {s: steers_free(v) for s, v in free["selectors"].items()}
        add("4", claim4, any(steers.values()),
            f"free answers, reported half ({free['reported_items']} items): holds where the steering score at the "
            f"α chosen on the other half beats every random control at matched plain-text damage by ≥ "
            f"{MIN_STEERING_GAP} with its CI above 0: {[s for s, v in steers.items() if v] or 'none'}. "
            + "; ".join(f"{s}: α {v['chosen_alpha']:g}, score {_fmt(v['steering_score'], '.3f')} (damage "
                        f"{_fmt(v['text_damage'], '+.3f')}), controls at matched damage "
                        f"{spread([c['steering_score'] for c in v['controls']], '.3f')}"
                        for s, v in free["selectors"].items() if "controls" in v),  # grid cells: gaps only
            ["steering_cost.png"], per_selector=steers,
            p={s: v.get("p_permutation") for s, v in free["selectors"].items()})
    steer = r["steering"]
    constrained = {s: steers_beyond_random(v) for s, v in steer.items()}
    rows = [f"{s}: rate {_fmt(v['mean_esn'][0], '.2f')} → {_fmt(v['mean_esn'][-1], '.2f')} at α {v['alphas'][-1]:g} "
            f"(random {spread(v['mean_random_per_seed'], '.2f')}), Spearman ρ {_fmt(v['spearman'], '+.2f')}, gap CI "
            + " / ".join(f"[{_fmt(c[0], '+.2f')}, {_fmt(c[1], '+.2f')}]" for c in v["gap_ci_per_seed"])
            + (f", label mass {_fmt(v['label_mass'][-1], '.2f')}, KL {_fmt(v['kl'][-1], '.2f')}" if "kl" in v else "")
            for s, v in steer.items()]
    add(CONSTRAINED, "Gain on the selected neurons steers the ranking of the label words toward the emotion, with a "
        "dose response (constrained)", any(constrained.values()),
        f"holds where Spearman ρ over α > 0 and ESN − random at max α ≥ {MIN_STEERING_GAP} with its CI above 0, "
        f"against every random control: {[s for s, v in constrained.items() if v] or 'none'}. " + "; ".join(rows),
        ["steering.png"], per_selector=constrained, p={s: v["p_permutation"] for s, v in steer.items()})
    agn = r["agnostic"]
    strategies = STRATEGIES
    best_gain = {s: {a: max((x for x in v[a]["delta_uar"] if x is not None), default=None) for a in strategies}
                 for s, v in agn.items()}
    weaker = {s: all(less(b[a], b["targeted"]) for a in strategies[1:]) for s, b in best_gain.items()}
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




def _stratified(labels, rng) -> np.ndarray:
    """One resample of the items: each emotion's items drawn with replacement, as many as it has."""
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), int((labels == c).sum()))
                           for c in np.unique(labels)])


def grid(r: dict, ev: Evidence, cfg) -> dict[str, list]:
    """Each finding's outcome in every cell of the stability grid (see the module docstring and :data:`RULE`): a
    verdict word, or for :data:`PER_SELECTOR` findings {selector: the rule holds}."""
    names = parse_list("selectors", cfg.selectors)
    alphas = parse_list("alphas", cfg.alphas)
    e, main = ev.clean.shape[-1], cfg.main_k
    rng = np.random.default_rng(cfg.seed)
    draws = [_stratified(ev.labels, rng) for _ in range(cfg.resamples)]
    draws_b = [_stratified(ev.transfer_labels, rng) for _ in range(cfg.resamples)] if ev.transfer is not None else None
    sources = ev.prompt_masks if ev.prompt_masks is not None else ev.masks[None, :, main, 0]  # [P or 1, S, E, L, I]
    hists = sources.sum(-1)  # [P or 1, S, E, L]
    free = ev.free is not None
    if free:  # finding 4: resamples of the reported half of the free-form items
        reported = np.flatnonzero(~steering.score.halves(ev.free["labels"], cfg.seed + steering.score.SPLIT_SEED))
        draws_f = [reported[_stratified(ev.free["labels"][reported], rng)] for _ in range(cfg.resamples)]
    out = {fid: [] for fid in (*FINDINGS, CONSTRAINED)}
    for p in range(ev.clean.shape[0]):
        clean, deact = preds(ev.clean[p]), preds(ev.deactivate[p, :, main])  # [N], [S, 1 + R, E, N]
        steer, rnd, union_mix = preds(ev.steer[p]), preds(ev.steer_random[p]), preds(ev.agnostic[p])
        prep = steering.prepare(ev.free, p, cfg.seed) if free else None
        for m, idx in enumerate(draws):
            picks = rng.integers(0, e, (len(names), e))  # 6a: each selector's emotions drawn with replacement
            hist = np.take_along_axis(hists[min(p, len(hists) - 1)], picks[..., None], 1).sum((0, 1))
            extra = {"layers": {"summary": analysis.layer_summary(hist)}, "data": r["data"], "transfer": None}
            if draws_b is not None:
                b = draws_b[m]
                extra["transfer"] = analysis.transfer_result(
                    r["transfer"]["dataset"], ev.transfer_labels[b], preds(ev.transfer_clean[p])[b],
                    preds(ev.transfer[p])[..., b], ev.masks[:, main, 0], ev.transfer_masks, names, e)
            for j in range(deact.shape[1] - 1):
                cell = analysis.interventions(ev.labels[idx], clean[idx], deact[:, [0, 1 + j]][..., idx],
                                              steer[..., idx], rnd[:, [j]][..., idx], union_mix[..., idx], names,
                                              alphas, e, cfg)
                cell_r = {"selectors": {s: {"k": {r["main_k"]: {"deactivation": d}}}
                                        for s, d in cell["deactivation"].items()},
                          "steering": cell["steering"], "agnostic": cell["agnostic"], **extra}
                if free:
                    cell_r["steering_free"] = {"reported_items": len(draws_f[m]), "selectors": {
                        s: steering.cell(prep, i, j, draws_f[m], cfg) for i, s in enumerate(names)}}
                for f in findings(cell_r, r["main_k"]):
                    if f["id"] in USES_SEEDS or j == 0:
                        out[f["id"]].append(f["per_selector"] if f["id"] in PER_SELECTOR and "per_selector" in f
                                            else f["verdict"])
    return out


def stability(cells: list[str]) -> dict:
    """verdict (holds / fragile / does not hold / not tested), holds_in and grid_size from the cells' verdicts."""
    tested = [c for c in cells if c != "not tested"]
    if not tested:
        return {"verdict": "not tested", "holds_in": None, "grid_size": 0}
    share = sum(c == "holds" for c in tested) / len(tested)
    word = "holds" if share >= HOLDS_FROM else "fragile" if share >= FRAGILE_FROM else "does not hold"
    return {"verdict": word, "holds_in": sum(c == "holds" for c in tested), "grid_size": len(tested)}


def through_selectors(f: dict, cells: list) -> dict:
    """A "some selector" finding's verdict: each selector's own stability over the grid, capped at fragile unless
    its point rule holds with a Holm-adjusted p below :data:`ALPHA_LEVEL`; the best selector's verdict (ties: the
    larger share of cells) with ``selector`` naming it (None when no selector reaches fragile)."""
    if not cells or isinstance(cells[0], str):  # not tested
        return {**stability(cells), "selector": None, "per_selector": {}}
    adjusted = holm(f["p"])
    per = {}
    for s, point in f["per_selector"].items():
        st = stability([verdict(c[s]) for c in cells])
        passed = bool(point) and adjusted[s] is not None and adjusted[s] < ALPHA_LEVEL
        word = "fragile" if st["verdict"] == "holds" and not passed else st["verdict"]
        per[s] = {**st, "verdict": word, "point": bool(point), "p": f["p"][s], "p_holm": adjusted[s]}
    best = max(per, key=lambda s: (RANK[per[s]["verdict"]], (per[s]["holds_in"] or 0) / max(per[s]["grid_size"], 1)))
    named = best if RANK[per[best]["verdict"]] >= RANK["fragile"] else None
    return {"verdict": per[best]["verdict"], "holds_in": per[best]["holds_in"], "grid_size": per[best]["grid_size"],
            "selector": named, "per_selector": per}


def assess(r: dict, ev: Evidence, cfg) -> list[dict]:
    """The findings of ``r`` (its point numbers) with their verdicts over the stability grid: each entry has
    ``verdict``, ``holds_in``, ``grid_size`` and ``point_verdict``; findings 1, 3 and 4 also ``selector`` and
    ``per_selector``; finding 4 ``free_form`` and ``constrained`` (each with the same keys)."""
    cells = grid(r, ev, cfg)
    out, constrained = [], None
    for f in findings(r, r["main_k"]):
        if f["id"] in PER_SELECTOR and "per_selector" in f:
            entry = {**f, "point_verdict": f["verdict"], **through_selectors(f, cells[f["id"]])}
        else:
            entry = {**f, "point_verdict": f["verdict"], **stability(cells[f["id"]])}
        entry.pop("p", None)
        if f["id"] == CONSTRAINED:
            constrained = entry
        else:
            out.append(entry)
    four = next(x for x in out if x["id"] == "4")
    four["free_form"] = {k: four[k] for k in ("verdict", "point_verdict", "holds_in", "grid_size", "selector")
                         if k in four}
    four["constrained"] = constrained
    return out
