"""The report's steering sections: steering judged as control against what it costs (free answers, first), then the
constrained ranking of label words with its label mass and drift, and "What the model says" at the largest α; and
the "control against cost" plot.

Blocks are :mod:`experiments.study.report`'s: ("h", level, text), ("p", text), ("table", header, rows), ("img", file).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.study import verdicts


def _num(x, fmt="+.3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _nan(x) -> float:
    return np.nan if x is None else x


def plot(workdir: Path, r: dict) -> None:
    """steering_cost.png: steering score (reported half) against plain-text damage, a curve over α per selector
    (its random controls' mean over seeds dashed in the same colour), DiffMean's rows over their factors, prompting
    as a point."""
    free = r["steering_free"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (s, v) in enumerate(free["selectors"].items()):
        color = f"C{i}"
        ax.plot(v["text_damage_per_alpha"], [_nan(y) for y in v["reported"]], "o-", color=color, label=f"{s} ESNs")
        ax.plot(v["text_damage_per_alpha"][v["chosen_index"]], _nan(v["steering_score"]), "*", ms=14, color=color)
        damage = np.mean(v["random_text_damage_per_alpha"], 0)
        rnd = np.nanmean(np.array([[_nan(y) for y in row] for row in v["random_reported_per_alpha"]]), 0)
        ax.plot(damage, rnd, "s--", mfc="none", color=color, alpha=0.7, label=f"{s} random (mean over seeds)")
    for j, (name, v) in enumerate(free["diffmean"].items()):
        ax.plot(v["text_damage_per_factor"], [_nan(y) for y in v["reported"]], "^:", color="k", alpha=0.4 + 0.4 * j,
                label=name.replace("_", " "))
    ax.plot([0], [_nan(free["prompting"]["steering_score"])], "P", ms=12, color="C6", label="prompting")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xscale("symlog", linthresh=0.1)  # the largest gains cost tens of times what the small ones do
    ax.set(xlabel="plain-text damage (Δ nats/token, linear below 0.1)", ylabel="steering score (reported half)",
           title="control against cost (★: the α chosen on the other half)")
    ax.legend(fontsize=7, loc="best")
    fig.savefig(workdir / "steering_cost.png", dpi=80, bbox_inches="tight")
    plt.close(fig)


def _reliability(v: dict) -> str:
    return (f"{_num(v['toward'], '.0%')} / {_num(v['unchanged'], '.0%')} / {_num(v['away'], '.0%')}"
            if v.get("toward") is not None else "n/a")


def free_blocks(r: dict) -> list[tuple]:
    """Steering judged as control: the rule, the table at the chosen α, the plot, what the model says there."""
    free = r.get("steering_free")
    if not free:
        return []
    rows = []
    for s, v in free["selectors"].items():
        c = v["controls"]
        rows.append([f"{s} ESNs", f"α {v['chosen_alpha']:g}", _num(v["steering_score"], ".3f"),
                     " / ".join(_num(v[k], ".2f") for k in ("emotion", "instruction", "fluency")),
                     _num(v["text_damage"]), _num(v.get("label_mass"), ".2f"), _num(v.get("kl"), ".2f"),
                     verdicts.spread([x["steering_score"] for x in c], ".3f") + " at α "
                     + ", ".join(f"{x['alpha']:.2g}{'' if x['within_grid'] else '†'}" for x in c),
                     "; ".join(f"{_num(x['gap'])} [{_num(x['gap_ci'][0])}, {_num(x['gap_ci'][1])}]" for x in c),
                     _num(v["p_permutation"], ".3g"), _reliability(v)])
    for name, v in free["diffmean"].items():
        rel = f" (≈{v['relative_size']:.2g}× activation)" if v.get("relative_size") is not None else ""
        rows.append([name.replace("_", " "), f"c {v['chosen_factor']:g}{rel}", _num(v["steering_score"], ".3f"),
                     " / ".join(_num(v[k], ".2f") for k in ("emotion", "instruction", "fluency")),
                     _num(v["text_damage"]), "n/a", "n/a", "—", "—", "—", _reliability(v)])
    pr, cl = free["prompting"], free["clean"]
    rows.append(["prompting (the question names the target)", "—", _num(pr["steering_score"], ".3f"),
                 " / ".join(_num(pr[k], ".2f") for k in ("emotion", "instruction", "fluency")), _num(0.0), "n/a",
                 "n/a", "—", "—", "—", _reliability(pr)])
    rows.append(["unedited model", "—", _num(cl["score"], ".3f"),
                 " / ".join(_num(cl[k], ".2f") for k in ("emotion", "instruction", "fluency")), _num(0.0),
                 _num(r["clean"].get("label_mass"), ".2f"), _num(0.0, ".2f"), "—", "—", "—", "—"])
    out = [("h", 2, "Steering judged as control, against its cost"),
           ("p", free["rule"]),
           ("p", f"{free['items']} free-form items ({free['selection_items']} choose α, {free['reported_items']} "
                 f"report), answers of at most {free['answer_tokens']} tokens, under the first prompt; α grid "
                 f"{', '.join(f'{a:g}' for a in free['alphas'][1:])}, DiffMean factors "
                 f"{', '.join(f'{a:g}' for a in free['factors'][1:])}. Plain-text damage = Δ next-token loss on the "
                 "collateral section's texts; label mass and KL (clean ‖ intervened) at the answer position come "
                 "from the constrained sweep at the same α. Controls: each random control at the α whose damage "
                 "matches the ESNs' († beyond its grid: its nearest end). Moved: the share of (clip, target) pairs "
                 "whose score rose / stayed / fell against the unedited model's answer."),
           ("table", ["row", "chosen", "steering score", "emotion / instruction / fluency", "text damage",
                      "label mass", "KL", "controls at matched cost: score mean [min, max]",
                      "ESN − control [95% CI], per seed", "p_perm", "moved toward / unchanged / away"], rows),
           ("img", "steering_cost.png")]
    ex = free.get("examples")
    if ex:
        out.append(("p", f"What the model says at the chosen α: one reported clip per emotion, steered toward each "
                         f"other emotion by {ex['selector']}'s ESNs ×(1+{ex['alpha']:g}), by their first random "
                         f"control ×(1+{ex['random_alpha']:g}) (the grid α nearest its matched cost), by DiffMean on "
                         f"the ESN neurons ×{ex['factor']:g}, and by prompting."))
        for clip in ex["clips"]:
            out += [("p", f"Clip `{clip['id']}` (label **{clip['label']}**). Unedited: “{_one_line(clip['clean'])}”"),
                    ("table", ["toward", "ESNs", "random control", "DiffMean", "prompting"],
                     [[t["target"], *(f"“{_one_line(t[k])}”" for k in ("esn", "random", "diffmean", "prompting"))]
                      for t in clip["targets"]])]
    return out


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "↵")


def constrained_blocks(r: dict) -> list[tuple]:
    """The paper's constrained steering (ranking the label words), with label mass and drift at every α."""
    alphas = next(iter(r["steering"].values()))["alphas"]
    return [("h", 2, "Steering, constrained (gain ×(1+α), ranking the label words)"),
            ("p", "Share of items whose label is not e predicted as e, mean over e; α = 0 is the clean model. A "
                  "ranking of four label words means little once their total probability (label mass) has fallen "
                  "or the answer-position distribution has drifted far (KL): both are listed beside it."),
            ("table", ["selector", *[f"α={a:g}" for a in alphas], "label mass per α", "KL per α",
                       "random at max α, mean [min, max] (mass, KL)", "Spearman ρ",
                       "ESN − random at max α [95% CI], per seed"],
             [[s, *[_num(y, ".3f") for y in v["mean_esn"]],
               " / ".join(_num(x, ".2f") for x in v.get("label_mass", [])) or "n/a",
               " / ".join(_num(x, ".2f") for x in v.get("kl", [])) or "n/a",
               f"{verdicts.spread(v['mean_random_per_seed'], '.3f')} ({_num(v.get('random_label_mass'), '.2f')}, "
               f"{_num(v.get('random_kl'), '.2f')})", _num(v["spearman"], "+.2f"),
               "; ".join(f"{_num(g)} [{_num(c[0])}, {_num(c[1])}]" for g, c in zip(v["gap_per_seed"],
                                                                                 v["gap_ci_per_seed"], strict=True))]
              for s, v in r["steering"].items()]),
            ("img", "steering.png")]


def says_blocks(r: dict) -> list[tuple]:
    """"What the model says": one evaluation clip per emotion, its free answers clean and under interventions."""
    w = r["says"]
    out = [("h", 2, "What the model says"),
           ("p", f"Free answers (greedy, at most {w['max_new_tokens']} new tokens) to one evaluation clip per emotion "
                 f"under the first prompt: clean, with each emotion's {w['selector']} ESNs (k={w['k']}: "
                 f"{', '.join(map(str, w['neurons']))} neurons) amplified ×(1+{w['alpha']:g}), with their matched "
                 "random control amplified alike, and with the ESNs ablated. → the label the parser reads (— none).")]
    for clip in w["clips"]:
        clean, rest = clip["answers"][0], clip["answers"][1:]
        out += [("p", f"Clip `{clip['id']}` (label **{clip['label']}**). Clean: {_said(clean)}"),
                ("table", ["emotion", f"ESNs ×(1+{w['alpha']:g})", f"random ×(1+{w['alpha']:g})", "ESNs ablated"],
                 [[emotion, *map(_said, rest[3 * j:3 * j + 3])] for j, emotion in enumerate(r["model"]["labels"])])]
    return out


def _said(answer: dict) -> str:
    text = answer["text"].replace("\r", "").replace("\n", "↵")  # one table cell per answer
    return f"“{text}” → {answer['parsed'] or '—'}"
