"""The free-form steering evaluation's numbers, from the stored arrays alone (numpy): each answer scored toward
every target (:mod:`experiments.study.steering.score`), α chosen per row on the selection half, every number on the
reported half, random controls at matched plain-text damage, DiffMean and prompting beside them; and finding 4's
numbers in one cell of the stability grid.

Shapes: P prompts, S selectors, R random seeds, A α values, F DiffMean factors, E emotions, N free-form items.
"""

from __future__ import annotations

import numpy as np

import esn_jax
from configs.study import parse_list
from experiments.study.steering import score
from experiments.study.steering.stages import DIFFMEAN_ROWS, Layout

ANSWER_KEYS = ("parsed", "named", "loss", "repetition")
AXES = ("emotion", "instruction", "fluency", "score")


def _with_clean(x, clean) -> np.ndarray:
    """Rows over a grid [..., G, E, N] with the unedited model's [E, N] put in front as α = 0: [..., 1 + G, E, N]."""
    front = np.broadcast_to(clean, (*x.shape[:-3], 1, *x.shape[-2:]))
    return np.concatenate([front, x], axis=-3)


def prepare(free: dict, p: int, seed: int) -> dict:
    """Prompt p's answers scored toward every target, on the α grid with α = 0 in front (the unedited model), and
    the held-out split: ``esn`` [S, 1 + A, E, N], ``random`` [S, R, 1 + A, E, N], ``diffmean`` [2, 1 + F, E, N]
    and ``clean``, ``prompting`` [E, N], each a dict of :data:`AXES`; ``damage`` (mean over emotions) ``esn``
    [S, 1 + A], ``random`` [S, R, 1 + A], ``diffmean`` [2, 1 + F]; ``selection`` bool [N]; ``reference``."""
    layout = Layout(*map(int, free["layout"]))
    labels = free["labels"]
    parts = {k: layout.split(free[k][p]) for k in ANSWER_KEYS}
    ref = score.reference(parts["loss"]["clean"])
    e = layout.emotions

    def toward(name):
        return score.toward(*(parts[k][name] for k in ANSWER_KEYS), labels, ref)
    clean = score.toward(*(np.broadcast_to(parts[k]["clean"], (e, len(labels))) for k in ANSWER_KEYS), labels, ref)
    prompted = score.toward(*(free[f"prompting_{k}"][p] for k in ANSWER_KEYS), labels, ref)
    rows = {name: {k: _with_clean(v, clean[k]) for k, v in toward(name).items()} for name in ("esn", "random",
                                                                                             "diffmean")}
    damage = {name: np.concatenate([np.zeros((*d.shape[:-2], 1)), d.mean(-1)], -1)
              for name, d in layout.split(free["damage"]).items() if name != "clean"}
    return {**rows, "clean": clean, "prompting": prompted, "damage": damage, "reference": ref,
            "selection": score.halves(labels, seed + score.SPLIT_SEED)}


def matched_control(prep: dict, s: int, j: int, chosen: int) -> dict:
    """Random control j of selector s at the ESNs' cost at grid index ``chosen``: its per-pair axes [E, N]
    interpolated over its grid, the α and damage that gives, and whether the cost fell within its grid."""
    target = prep["damage"]["esn"][s, chosen]
    weights, within = score.matched(target, prep["damage"]["random"][s, j])
    items = {k: np.tensordot(weights, v[s, j], axes=(0, 0)) for k, v in prep["random"].items()}
    return {"weights": weights, "within": within, "items": items,
            "damage": float(weights @ prep["damage"]["random"][s, j])}


def item_gaps(esn, control) -> np.ndarray:
    """Per item, the mean over its targets of ESN − control steering scores: [E, N] each -> [N]."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.asarray(esn) - np.asarray(control), axis=0)


def boot_ci(values, draws) -> list:
    """The 95 % percentile interval of the mean of values [N] over resamples draws [B, N]."""
    means = np.asarray(values, np.float64)[draws].mean(-1)
    return [float(round(q, 12)) for q in np.quantile(means, [0.025, 0.975])]


def _means(axes: dict, cols) -> dict:
    return {k: _num(score.mean_score(v[..., cols])) for k, v in axes.items()}


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _chosen(per_alpha_selection) -> int:
    """The grid index (α = 0 at 0, never chosen) of the best selection-half score."""
    return 1 + score.choose(np.asarray(per_alpha_selection)[1:])


def selector_result(prep: dict, s: int, grid, seeds, cfg, costs=None) -> dict:
    """Selector s on the reported half: the chosen α, its score and axes, its costs, each random control at matched
    cost (gap, CI, reliability) and the paired permutation p of ESN vs the controls' mean."""
    sel, rep = prep["selection"], ~prep["selection"]
    esn = {k: v[s] for k, v in prep["esn"].items()}  # [1 + A, E, N]
    on_selection = score.mean_score(esn["score"][..., sel])
    a = _chosen(on_selection)
    chosen = {k: v[a][:, rep] for k, v in esn.items()}
    draws = np.random.default_rng(cfg.seed).integers(0, int(rep.sum()), (cfg.bootstrap, int(rep.sum())))
    controls, gaps = [], []
    for j, seed in enumerate(seeds):
        m = matched_control(prep, s, j, a)
        items = {k: v[:, rep] for k, v in m["items"].items()}
        g = item_gaps(chosen["score"], items["score"])
        gaps.append(g)
        controls.append({"seed": int(seed), "alpha": float(m["weights"] @ np.asarray(grid)), "within_grid": m["within"],
                         "text_damage": m["damage"],
                         **{k: _num(score.mean_score(items[k])) for k in AXES if k != "score"},
                         "steering_score": _num(score.mean_score(items["score"])),
                         "gap": _num(np.mean(g)), "gap_ci": boot_ci(g, draws),
                         **score.reliability(items["score"], prep["clean"]["score"][:, rep])})
    gap_items = np.nanmean(gaps, 0)  # per item, ESN − the controls' mean
    out = {"alphas": list(grid), "selection": [_num(x) for x in on_selection],
           "reported": [_num(x) for x in score.mean_score(esn["score"][..., rep])],
           "chosen_alpha": float(grid[a]), "chosen_index": a, "steering_score": _num(score.mean_score(chosen["score"])),
           **{k: _num(score.mean_score(chosen[k])) for k in AXES if k != "score"},
           "text_damage": float(prep["damage"]["esn"][s, a]),
           "text_damage_per_alpha": prep["damage"]["esn"][s].tolist(),
           "random_reported_per_alpha": [[_num(x) for x in score.mean_score(prep["random"]["score"][s, j][..., rep])]
                                         for j in range(len(seeds))],
           "random_text_damage_per_alpha": prep["damage"]["random"][s].tolist(),
           "controls": controls, "gap_per_seed": [c["gap"] for c in controls],
           "gap_ci_per_seed": [c["gap_ci"] for c in controls],
           "p_permutation": _num(esn_jax.metrics.paired_permutation_test(gap_items, np.zeros_like(gap_items),
                                                                         cfg.permutations, cfg.seed))
           if len(gap_items) else None,
           **score.reliability(chosen["score"], prep["clean"]["score"][:, rep])}
    if costs is not None:  # the constrained sweep's costs at the same α (its grid is the α grid without 0)
        out["label_mass"], out["kl"] = (float(np.mean(np.asarray(costs[s, a - 1, ..., i], np.float64))) for i in (1, 0))
    return out


def row_result(prep: dict, name: str, row: int, grid, relative=None) -> dict:
    """A steering row without random controls (DiffMean): the held-out choice and its numbers on the reported
    half."""
    sel, rep = prep["selection"], ~prep["selection"]
    axes = {k: v[row] for k, v in prep[name].items()}
    on_selection = score.mean_score(axes["score"][..., sel])
    a = _chosen(on_selection)
    chosen = {k: v[a][:, rep] for k, v in axes.items()}
    out = {"factors": list(grid), "selection": [_num(x) for x in on_selection],
           "reported": [_num(x) for x in score.mean_score(axes["score"][..., rep])],
           "chosen_factor": float(grid[a]), "chosen_index": a,
           "steering_score": _num(score.mean_score(chosen["score"])),
           **{k: _num(score.mean_score(chosen[k])) for k in AXES if k != "score"},
           "text_damage": float(prep["damage"][name][row, a]),
           "text_damage_per_factor": prep["damage"][name][row].tolist(),
           **score.reliability(chosen["score"], prep["clean"]["score"][:, rep])}
    if relative is not None:
        out["relative_size"] = _num(grid[a] * np.nanmean(relative[row]))
    return out


def analyze(free: dict, cfg, names, steer_costs=None, prompts=None, words=None) -> dict:
    """results.json's ``steering_free``: under the first prompt at the top, every prompt in ``per_prompt``.
    steer_costs: the constrained sweep's costs [P, S, A, E, N, 2] (for label mass and KL at the chosen α); words:
    the label words (for :func:`examples`)."""
    alphas = (0.0, *parse_list("alphas", cfg.alphas))
    factors = (0.0, *parse_list("diffmean_factors", cfg.diffmean_factors))
    seeds = parse_list("random_seeds", cfg.random_seeds)
    out = []
    for p in range(free["text"].shape[0]):
        prep = prepare(free, p, cfg.seed)
        rep = ~prep["selection"]
        out.append({
            "prompt": prompts[p] if prompts else p, "reference_loss": _num(prep["reference"]),
            "selectors": {m: selector_result(prep, s, alphas, seeds, cfg,
                                             None if steer_costs is None else steer_costs[p])
                          for s, m in enumerate(names)},
            "diffmean": {row: row_result(prep, "diffmean", i, factors, free["diffmean_relative"])
                         for i, row in enumerate(DIFFMEAN_ROWS)},
            "prompting": {"steering_score": _num(score.mean_score(prep["prompting"]["score"][:, rep])),
                          **{k: _num(score.mean_score(prep["prompting"][k][:, rep])) for k in AXES if k != "score"},
                          "text_damage": 0.0,
                          **score.reliability(prep["prompting"]["score"][:, rep], prep["clean"]["score"][:, rep])},
            "clean": _means({k: v[:, rep] for k, v in prep["clean"].items()}, slice(None))})
    labels = free["labels"]
    sel = score.halves(labels, cfg.seed + score.SPLIT_SEED)
    result = {"rule": score.RULE, "items": int(len(labels)), "selection_items": int(sel.sum()),
              "reported_items": int((~sel).sum()), "alphas": list(alphas), "factors": list(factors),
              "answer_tokens": int(cfg.answer_tokens), "seed": int(cfg.seed), "selection": sel.tolist(), **out[0],
              "per_prompt": out}
    if words is not None:
        result["examples"] = examples(free, result, words, names[0], names)
    return result


def cell(prep: dict, s: int, j: int, cols, cfg) -> dict:
    """Finding 4's free-form numbers in one grid cell: selector s against random control j alone, on the items
    ``cols`` (indices, a resample of the reported half), α chosen on the selection half as in the point result."""
    a = _chosen(score.mean_score(prep["esn"]["score"][s][..., prep["selection"]]))
    g = item_gaps(prep["esn"]["score"][s, a][:, cols], matched_control(prep, s, j, a)["items"]["score"][:, cols])
    draws = np.random.default_rng(cfg.seed).integers(0, len(cols), (cfg.bootstrap, len(cols)))
    return {"gap_per_seed": [_num(np.mean(g))], "gap_ci_per_seed": [boot_ci(g, draws)]}


def examples(free: dict, result: dict, labels_words, selector: str, names) -> dict:
    """What the model says at the chosen α, for the report: under the first prompt, one reported-half clip per
    emotion, its answers steered toward each other emotion by ``selector``'s ESNs at their chosen α, by its first
    random control at the grid α nearest its matched cost, by DiffMean (on the ESN neurons, at its chosen factor)
    and by prompting."""
    layout = Layout(*map(int, free["layout"]))
    text = layout.split(free["text"][0])
    s = list(names).index(selector)
    v, d = result["selectors"][selector], result["diffmean"][DIFFMEAN_ROWS[0]]
    a, f = v["chosen_index"] - 1, d["chosen_index"] - 1
    near = int(np.argmin(np.abs(np.asarray(v["alphas"][1:]) - v["controls"][0]["alpha"])))
    labels = free["labels"]
    reported = ~score.halves(labels, result["seed"] + score.SPLIT_SEED)
    clips = []
    for c in range(layout.emotions):
        found = np.flatnonzero(reported & (labels == c))
        if not found.size:
            continue
        n = int(found[0])
        clips.append({"id": str(free["items"][n]), "label": labels_words[c], "clean": str(text["clean"][n]),
                      "targets": [{"target": labels_words[t], "esn": str(text["esn"][s, a, t, n]),
                                   "random": str(text["random"][s, 0, near, t, n]),
                                   "diffmean": str(text["diffmean"][0, f, t, n]),
                                   "prompting": str(free["prompting_text"][0, t, n])}
                                  for t in range(layout.emotions) if t != c]})
    return {"selector": selector, "alpha": v["chosen_alpha"], "random_alpha": v["alphas"][1 + near],
            "factor": d["chosen_factor"], "clips": clips}
