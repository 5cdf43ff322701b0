"""report.md and report.html (one page, plots embedded) with the PNG plots, from results.json's dict.

The report is a list of blocks rendered twice, so the Markdown and the HTML say the same thing.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.study import analysis, report_steering, stages, verdicts  # noqa: E402


def _num(x, fmt="+.3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _nan(x) -> float:
    return np.nan if x is None else x


def plots(workdir: Path, r: dict) -> None:
    """deactivation_<selector>.png, deactivation_bars.png, steering.png, steering_cost.png (free-form steering),
    agnostic.png, layers.png, overlaps.png, transfer.png when transfer was run and prompt_transfer.png with several
    prompts."""
    if r.get("steering_free"):
        report_steering.plot(workdir, r)
    labels, k = r["model"]["labels"], r["main_k"]
    sel = list(r["selectors"])
    for s in sel:
        d = r["selectors"][s]["k"][k]["deactivation"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, (title, m) in zip(axes, ((f"{s} ESNs", d["delta"]), ("matched random (mean)", d["random"]["delta"])),
                                  strict=True):
            m = np.array(m, dtype=float)
            im = ax.imshow(m, cmap="RdBu", vmin=-1, vmax=1)
            ax.set(title=title, xticks=range(len(labels)), yticks=range(len(labels)), xlabel="label emotion")
            ax.set_xticklabels(labels, rotation=45)
            ax.set_yticklabels(labels)
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, "" if np.isnan(v) else f"{v:+.2f}", ha="center", va="center", fontsize=8)
        axes[0].set_ylabel("ablated emotion's neurons")
        fig.colorbar(im, ax=axes, label="Δ recall")
        fig.savefig(workdir / f"deactivation_{s}.png", dpi=80, bbox_inches="tight")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sel)), 4))
    x = np.arange(len(sel))
    deact = [r["selectors"][s]["k"][k]["deactivation"] for s in sel]
    for i, (name, key) in enumerate((("ESN self", "self"), ("ESN cross", "cross"))):
        vals = np.array([_nan(d[f"mean_{key}"]) for d in deact])
        ci = np.array([[_nan(c) for c in d[f"ci_{key}"]] for d in deact])  # bootstrap 95 % CI over items
        ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=name, yerr=[vals - ci[:, 0], ci[:, 1] - vals], capsize=3)
    for i, (name, key) in enumerate((("random self", "self"), ("random cross", "cross")), start=2):
        seeds = [np.array([_nan(v) for v in d["random"][f"{key}_per_seed"]]) for d in deact]  # spread over seeds
        vals = np.array([np.mean(v) for v in seeds])
        ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=f"{name} (seeds: min–max)",
               yerr=[vals - [v.min() for v in seeds], [v.max() for v in seeds] - vals], capsize=3)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xticks=x, ylabel="mean Δ recall", title=f"self vs cross deactivation (k={k}; ESN bars: 95% CI)")
    ax.set_xticklabels(sel)
    ax.legend(fontsize=7)
    fig.savefig(workdir / "deactivation_bars.png", dpi=80, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sel), figsize=(3.2 * len(sel), 3.2), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], sel, strict=True):
        v = r["steering"][s]
        ci = np.array([[_nan(c) for c in pair] for pair in v["esn_ci"]])
        ax.plot(v["alphas"], [_nan(y) for y in v["mean_esn"]], "o-", label="ESN")
        ax.fill_between(v["alphas"], ci[:, 0], ci[:, 1], alpha=0.25, label="ESN 95% CI")
        seeds = [_nan(y) for y in v["mean_random_per_seed"]]
        ax.plot([v["alphas"][-1]] * len(seeds), seeds, "s", mfc="none", color="C3", label="random controls")
        ax.set(title=s, xlabel="α", xticks=v["alphas"])
    axes[0, 0].set_ylabel("share predicted as the target")
    axes[0, 0].legend(fontsize=7)
    fig.savefig(workdir / "steering.png", dpi=80, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sel), figsize=(3.2 * len(sel), 3.2), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], sel, strict=True):
        for name, v in r["agnostic"][s].items():
            if name != "clean_uar":
                ax.plot(r["agnostic_alphas"], [np.nan if y is None else y for y in v["delta_uar"]], "o-", label=name)
        ax.set(title=s, xlabel="α", xticks=r["agnostic_alphas"])
    axes[0, 0].set_ylabel("ΔUAR vs clean")
    axes[0, 0].legend(fontsize=7)
    fig.savefig(workdir / "agnostic.png", dpi=80, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sel), figsize=(3.2 * len(sel), 3.2), squeeze=False)
    for ax, s in zip(axes[0], sel, strict=True):
        h = r["layers"]["per_selector"][s]
        ax.bar(range(len(h)), h)
        ax.set(title=s, xlabel="layer")
    axes[0, 0].set_ylabel("selected neurons")
    fig.savefig(workdir / "layers.png", dpi=80, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 3.5))
    m = np.array(r["overlaps"]["selectors"], dtype=float)
    ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set(xticks=range(len(sel)), yticks=range(len(sel)), title="Jaccard between selectors")
    ax.set_xticklabels(sel, rotation=45)
    ax.set_yticklabels(sel)
    fig.savefig(workdir / "overlaps.png", dpi=80, bbox_inches="tight")
    plt.close(fig)

    for name, t, title in (("transfer.png", r["transfer"], "transfer to {}"),
                           ("prompt_transfer.png", r.get("prompt_transfer"), "across prompts{}")):
        if not t:
            continue
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(sel)), 3.5))
        t = t["selectors"]
        ax.bar(x - 0.2, [_nan(t[s]["specificity_own"]) for s in sel], 0.4, label="own masks")
        ax.bar(x + 0.2, [_nan(t[s]["specificity_transferred"]) for s in sel], 0.4, label="transferred masks")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xticks=x, ylabel="mean specificity",
               title=title.format(r["transfer"]["dataset"] if name == "transfer.png" else " (mean over pairs)"))
        ax.set_xticklabels(sel)
        ax.legend()
        fig.savefig(workdir / name, dpi=80, bbox_inches="tight")
        plt.close(fig)


def sizes(cfg: dict) -> str:
    """The sizes the run used, so that a reader can tell a lean run from a thorough one."""
    variant = "full" if cfg.get("full") else "local" if cfg.get("local") else "default"
    return (f"Sizes ({variant} variant): selectors {cfg['selectors'].replace('+', ', ')}; "
            f"k {cfg['ks'].replace('+', ', ')} (fractions of all neurons); α {cfg['alphas'].replace('+', ', ')}; "
            f"{len(cfg['random_seeds'].split('+'))} random control(s) per mask; "
            f"prompts {cfg['prompts'].replace('+', ', ')}; "
            f"at most {cfg['max_id_items']} identification and {cfg['max_eval_items']} evaluation items; "
            f"{cfg['bootstrap']} bootstrap and {cfg['permutations']} permutation resamples; {cfg['resamples']} "
            "resamples of the evaluation items in the stability grid.")


def compute(sizing: dict) -> str:
    """What the run was sized to (experiments/study/sizes.py): device, budget, batch size, each call shape's chunk."""
    batch = sizing.get("batch_size")
    shapes = "; ".join(
        f"{p['program']} on {p['batch']} × {p['length']} tokens, {p['variants']} interventions: {p['chunk']} per call "
        f"({p['bytes'] / 1e9:.3g} GB{', halved from ' + str(p['halved'][0]['from']) if p['halved'] else ''})"
        for p in sizing["programs"])
    return (f"Sized for {sizing['backend']} ({sizing['device']}, {sizing['devices']} device(s)) with a budget of "
            f"{sizing['budget_bytes'] / 1e9:.3g} GB per device"
            + (f"; batch_size=auto: {batch['resolved']} rows" if batch else "")
            + f"; variant_chunk={sizing['variant_chunk']}: {shapes or 'no sweep recorded'}.")


def summary(r: dict) -> str:
    """The one line that counts the verdicts, with the grid they come from."""
    c, g = r["summary"]["verdicts"], r["summary"]["grid"]
    line = (f"Summary: {c['holds']} hold, {c['fragile']} fragile, {c['does not hold']} do not hold, "
            f"{c['not tested']} not tested (grid: {g['random_seeds']} random-control seeds × {g['prompts']} "
            f"prompt(s) × {g['resamples']} resamples).")
    if g["prompts"] == 1:
        line += (" With one prompt the grid does not test whether the verdicts survive another wording: "
                 "prompts=asked+which (or the :local and :full variants) adds that.")
    return line


def _stability(f: dict) -> str:
    return "—" if f["holds_in"] is None else f"holds in {f['holds_in']} of {f['grid_size']}"


def _through(f: dict) -> str:
    """The selector a "some selector" finding holds through, with every selector's own count."""
    if not f.get("per_selector"):
        return "—"
    counts = ", ".join(f"{s} {v['holds_in'] if v['holds_in'] is not None else '—'}/{v['grid_size']}"
                       f"{'' if v['point'] else ' (point fails)'}" for s, v in f["per_selector"].items())
    return f"**{f['selector'] or 'none'}** ({counts})"


def finding_rows(findings: list[dict]) -> list[list[str]]:
    """The verdict table's rows; finding 4's constrained verdict follows it on a row of its own."""
    rows = []
    for f in findings:
        rows.append([f["id"], f["claim"], f"**{f['verdict']}**", _through(f), _stability(f), f["point_verdict"],
                     f["evidence"]])
        c = f.get("constrained")
        if c:
            rows.append([f"{f['id']} (constrained)", c["claim"], f"**{c['verdict']}**", _through(c), _stability(c),
                         c["point_verdict"], c["evidence"]])
    return rows


def blocks(r: dict) -> list[tuple]:
    """The report as (kind, ...) blocks: ("h", level, text), ("p", text), ("table", header, rows), ("img", file)."""
    k, labels = r["main_k"], r["model"]["labels"]
    c = r["clean"]
    out = [("h", 1, f"Emotion-sensitive neurons: {r['model']['name']} on {r['data']['dataset']}"),
           ("p", f"Checkpoint `{r['model']['checkpoint']}` ({r['model']['layers']} layers × {r['model']['neurons']} "
                 f"neurons), labels {', '.join(labels)}; config hash `{r['config_hash']}`. Identification on "
                 f"`{r['data']['id_split']}` ({sum(r['identification']['items_kept'])} of "
                 f"{sum(r['identification']['items_seen'])} items kept by the success filter"
                 f"{'' if r['identification']['success_filter'] else ' — filter off'}), interventions on "
                 f"`{r['data']['eval_split']}` ({r['data']['eval_items']} items). Main k = {k}."),
           ("p", sizes(r["config"])),
           *([("p", compute(r["sizing"]))] if r.get("sizing") else []),
           ("p", answer_mode(r)),
           ("h", 2, "Findings"),
           ("p", verdicts.RULE.format(resamples=r["summary"]["grid"]["resamples"], holds=verdicts.HOLDS_FROM,
                                      fragile=verdicts.FRAGILE_FROM)),
           ("p", summary(r)),
           ("table", ["#", "claim (DESIGN §1)", "verdict", "through", "stability", "point verdict",
                      "evidence (point)"], finding_rows(r["findings"])),
           ("h", 2, "Clean evaluation"),
           ("p", f"accuracy {c['accuracy']:.3f}, UAR {c['uar']:.3f}, macro-F1 {c['macro_f1']:.3f}"
                 + (f", unparsed {c['unparsed']:.1%}" if r["answer"]["mode"] == "generate" else "")
                 + (f"; label mass {c['label_mass']:.3f}." if c.get("label_mass") is not None else ".")),
           ("table", ["label", "recall", *[f"→ {w}" for w in labels]],
            [[w, _num(c["recall"][i], ".3f"), *map(str, c["confusion"][i])] for i, w in enumerate(labels)]),
           ("h", 2, "Deactivation (ablation) by selector and k"),
           ("p", "Δ = recall with the emotion's neurons ablated − clean recall; self = own emotion, cross = mean "
                 "over the others, specificity = self − cross (negative = specific). Random = matched controls "
                 "(same count per layer), one per seed. CI: bootstrap over items; p_perm: paired permutation test "
                 "of ESN vs random correctness on each item's own emotion."),
           ("table", ["selector", "k", "neurons/emotion", "self", "cross", "specificity [95% CI]",
                      "random spec. mean [min, max over seeds]", "p_emp", "p_perm", "label mass (random)",
                      "KL (random)"],
            [[s, kk, str(v["count_per_emotion"]), _num(d["mean_self"]), _num(d["mean_cross"]),
              f"{_num(d['mean_specificity'])} [{_num(d['ci'][0])}, {_num(d['ci'][1])}]",
              verdicts.spread(d["random"]["specificity_per_seed"], "+.3f"), _num(d["p_empirical"], ".3g"),
              _num(d["p_permutation"], ".3g"),
              f"{_num(d.get('label_mass'), '.2f')} ({_num(d['random'].get('label_mass'), '.2f')})",
              f"{_num(d.get('kl'), '.2f')} ({_num(d['random'].get('kl'), '.2f')})"]
             for s in r["selectors"] for kk, v in r["selectors"][s]["k"].items() for d in [v["deactivation"]]]),
           ("img", "deactivation_bars.png")]
    out += [("img", f"deactivation_{s}.png") for s in r["selectors"]]
    out += [*report_steering.free_blocks(r), *report_steering.constrained_blocks(r),
            *report_steering.says_blocks(r),
            ("h", 2, "Agnostic vs targeted injection"),
            ("p", "ΔUAR vs the clean model per α. Targeted: each item gets its true emotion's mask (an oracle); "
                  "Union: all emotions' neurons; Mix: equal-weight mix; 2-Pass: the clean prediction's mask."),
            ("table", ["selector", "strategy", *[f"α={a:g}" for a in r["agnostic_alphas"]],
                       "label mass / KL / text damage per α"],
             [[s, name, *[_num(y) for y in v["delta_uar"]], _costs(v)] for s, a in r["agnostic"].items()
              for name, v in a.items() if name != "clean_uar"]),
            ("img", "agnostic.png"),
            ("h", 2, "Layers and overlaps"),
            ("table", ["selector", *[str(i) for i in range(r["model"]["layers"])]],
             [[s, *map(str, h)] for s, h in r["layers"]["per_selector"].items()]),
            ("img", "layers.png"),
            ("table", ["Jaccard", *r["selectors"]],
             [[s, *[_num(x, ".2f") for x in row]] for s, row in zip(r["selectors"], r["overlaps"]["selectors"],
                                                                       strict=True)]),
            ("img", "overlaps.png")]
    if r["transfer"]:
        t = r["transfer"]
        out += [("h", 2, f"Cross-dataset transfer to {t['dataset']}"),
                ("table", ["selector", "own specificity", "transferred", "ratio", "Jaccard A–B"],
                 [[s, _num(v["specificity_own"]), _num(v["specificity_transferred"]), _num(v["ratio"], ".2f"),
                   _num(v["jaccard"], ".2f")] for s, v in t["selectors"].items()]),
                ("img", "transfer.png")]
    out += prompt_blocks(r)
    out += collateral_blocks(r)
    out.append(("p", "Every number is in results.json; predictions.npz and masks.npz hold the raw predictions and "
                     "masks they come from."))
    return out


def _costs(v: dict) -> str:
    """An agnostic strategy's costs per α (Union and Mix; targeted and 2-Pass are the steering sweep's rows)."""
    if "kl" not in v:
        return "see steering"
    return "; ".join(f"{_num(m, '.2f')} / {_num(k, '.2f')} / {_num(d)}"
                     for m, k, d in zip(v["label_mass"], v["kl"], v.get("text_damage", [None] * len(v["kl"])),
                                        strict=True))


def answer_mode(r: dict) -> str:
    a = r["answer"]
    if a["mode"] == "generate":
        return (f"Answers: free-form (greedy, at most {a['max_new_tokens']} new tokens), each mapped to a label by "
                f"the parser fixed before any result: {a['parser']}. Every prediction below is a parsed answer; "
                f"{r['clean']['unparsed']:.1%} of the clean answers named no label.")
    return ("Answers: scored (each label word's log-probability after the prompt; the most likely label is the "
            "prediction). `answer=generate` lets the model answer freely instead.")


def prompt_blocks(r: dict) -> list[tuple]:
    """Per-prompt numbers, the cross-prompt transfer and the near-ties."""
    k = r["main_k"]
    out = [("h", 2, "Prompts"),
           ("p", "Every prompt asks about the same items in the model's chat layout; the statistics pool over them, "
                 f"and deactivation and steering are measured under each (k={k}; specificity = mean self − cross, "
                 "steering = share moved to the target at the largest α)."),
           ("table", ["prompt", "question", "clean accuracy",
                      *[f"{s} specificity" for s in r["selectors"]], *[f"{s} steering" for s in r["selectors"]]],
            [[p["name"], p["question"], _num(p["clean"]["accuracy"], ".3f"),
              *[_num(p["deactivation"][s]["mean_specificity"]) for s in r["selectors"]],
              *[_num(p["steering"][s]["mean_esn"][-1], ".3f") for s in r["selectors"]]] for p in r["per_prompt"]])]
    t = r.get("prompt_transfer")
    if t:
        out += [("h", 3, "Cross-prompt transfer"),
                ("p", "Neurons selected under one prompt alone, ablated under another: specificity with the other "
                      "prompt's masks vs with the prompt's own, mean over ordered pairs of prompts."),
                ("table", ["selector", "own specificity", "transferred", "ratio", "Jaccard"],
                 [[s, _num(v["specificity_own"]), _num(v["specificity_transferred"]), _num(v["ratio"], ".2f"),
                   _num(v["jaccard"], ".2f")] for s, v in t["selectors"].items()]),
                ("img", "prompt_transfer.png")]
    out += [("h", 3, "Near-ties"),
            ("p", "Evaluations (item × intervention) whose two best labels lie within 1e-4 in log-probability, per "
                  "stage: float differences between machines (about 1e-5) can flip them."),
            ("table", ["stage", "evaluations", "near-ties"],
             [[name, str(v["evaluations"]), f"{v['near_ties']} ({v['share']:.2%})"] for name, v in
              r["near_ties"].items()])]
    return out


def collateral_blocks(r: dict) -> list[tuple]:
    """The "beyond the paper" section: Δ next-token loss on plain text beside the deactivation specificity."""
    c, k = r["collateral"], r["main_k"]
    if c["measured"]:
        verdict = (f"At k={k}, ESN sets that are specific in this sense: {c['specific_at_main_k'] or 'none'} "
                   f"(clean loss {c['clean_loss']:.3f} nats/token).")
    else:
        verdict = (f"Not judged: the tokenizer maps {c['unknown_share']:.0%} of the prompts' tokens to its unknown "
                   f"token (more than {analysis.MAX_UNKNOWN_SHARE:.0%}), so the loss scores that token rather than "
                   "language; the numbers are listed but no conclusion is drawn.")
    return [("h", 2, "Beyond the paper: collateral damage on plain text"),
            ("p", f"Δloss = the frozen LM's mean next-token loss (nats/token) on {c['prompts']} fixed plain-text "
                  "prompts (no audio) with an emotion's neurons ablated − without; mean over emotions, and for the "
                  "matched random controls mean [max] over seeds. A selector's neurons are specific when their "
                  "ablation is emotion-specific (finding 1's rule: specificity's 95% CI below 0 and below every "
                  "random control) and their Δloss is at most the largest random control's. " + verdict),
            ("table", ["selector", "k", "ESN Δloss", "random Δloss [max]", "ESN specificity", "random specificity",
                       "specific"],
             [[s, kk, _num(v["mean_esn"]), f"{_num(v['mean_random'])} [{_num(v['max_random'])}]",
               _num(d["mean_specificity"]), _num(d["random"]["mean_specificity"]),
               "n/a" if v["specific"] is None else ("yes" if v["specific"] else "no")]
              for s, sv in c["selectors"].items() for kk, v in sv["k"].items()
              for d in [r["selectors"][s]["k"][kk]["deactivation"]]])]


def markdown(bl: list[tuple]) -> str:
    lines = []
    for b in bl:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in b[2]] + [""]
        else:
            lines += [f"![{b[1]}]({b[1]})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escapes text and renders the two Markdown marks the blocks use (**bold**, `code`)."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_page(bl: list[tuple], workdir: Path) -> str:
    body = []
    for b in bl:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        else:
            data = base64.b64encode((workdir / b[1]).read_bytes()).decode()
            body.append(f'<p><img alt="{b[1]}" src="data:image/png;base64,{data}"></p>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ESN study</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def write(workdir: Path, r: dict) -> None:
    plots(workdir, r)
    bl = blocks(r)
    stages.write_atomically(workdir / "report.md", markdown(bl).encode())
    stages.write_atomically(workdir / "report.html", html_page(bl, workdir).encode())
