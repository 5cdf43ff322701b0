"""The study end to end on a tiny random Qwen2.5-Omni thinker (tests/experiments/tiny_reference.py) and the
tiny synthetic_prosody corpus: structure and internal consistency of results.json and the report, resume
after a kill, a sharded run, the config parser.

Consistency checks recompute numbers from the saved predictions and masks with plain numpy (not with
esn_jax.metrics), so a wrong metric call in the study would show up here.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import ports
from configs.study import REFERENCE_DIR, get_config
from esn_jax.collateral import PLAIN_TEXT
from esn_jax.data import pipeline
from esn_jax.reference import mini_lalm
from experiments.study import adapters, analysis, report
from experiments.study.evidence import Evidence
from experiments.study.run import analyze, run
from ports import features, prompts
from tests.esn_jax.test_collateral import direct_loss
from tests.experiments import tiny_kimi, tiny_lalm, tiny_reference
from tests.experiments.study.steering.test_score import by_hand

ROOT = Path(__file__).resolve().parents[2]
FINDINGS = ("1", "2", "3", "4", "5", "6a", "6b")


def study_args(ref, data_dir, **extra) -> str:
    # The stand-in is random, so the success filter would keep almost nothing: the test turns it off.
    args = dict(checkpoint=ref, data_dir=data_dir, dataset_config="tiny", success_filter="false", buckets="4",
                **extra)
    return "local," + ",".join(f"{k}={v}" for k, v in args.items())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return tiny_reference.build(root / "ref"), root / "tfds"


@pytest.fixture(scope="module")
def study(env, tmp_path_factory):
    """One local run; the corpus does not exist yet, so the study builds it. Transfer goes to the tiny corpus'
    other speakers (identification on its validation split)."""
    ref, data_dir = env
    cfg = get_config(study_args(ref, data_dir, transfer_dataset="synthetic_prosody", transfer_dataset_config="tiny",
                                transfer_id_split="validation"))
    workdir = tmp_path_factory.mktemp("run")
    return cfg, workdir, run(cfg, workdir)


def recall(labels, preds, c):
    """Per-class recall [c], NaN without items: the definition, in numpy."""
    return np.array([np.mean(preds[labels == i] == i) if (labels == i).any() else np.nan for i in range(c)])


def test_files_and_report(study):
    cfg, workdir, results = study
    assert json.loads((workdir / "results.json").read_text()) == json.loads(json.dumps(results))
    md = (workdir / "report.md").read_text()
    html = (workdir / "report.html").read_text()
    assert [f["id"] for f in results["findings"]] == list(FINDINGS)
    for f in results["findings"]:
        assert f["verdict"] in ("holds", "fragile", "does not hold", "not tested")
        assert f["point_verdict"] in ("holds", "does not hold", "not tested")
        stability = f"holds in {f['holds_in']} of {f['grid_size']}" if f["holds_in"] is not None else "—"
        assert f"| {f['id']} | {f['claim']} | **{f['verdict']}** |" in md
        assert f"| {stability} | {f['point_verdict']} |" in md
        for fig in f["figures"]:
            assert (workdir / fig).stat().st_size > 1000, fig
            assert f"![{fig}]({fig})" in md
    for s in results["selectors"]:
        assert (workdir / f"deactivation_{s}.png").exists()
    assert html.count("data:image/png;base64,") == md.count("![")
    assert "<table>" in html and "Findings" in html
    counts = {w: sum(f["verdict"] == w for f in results["findings"]) for w in ("holds", "fragile", "does not hold",
                                                                                 "not tested")}
    assert (f"Summary: {counts['holds']} hold, {counts['fragile']} fragile, {counts['does not hold']} do not hold, "
            f"{counts['not tested']} not tested (grid: 3 random-control seeds × 2 prompt(s) × 20 resamples).") in md
    assert "How to read a verdict (the rule was fixed before any result)" in md
    assert md.index("How to read a verdict") < md.index("| 1 |")  # the rule comes before the results
    assert "![prompt_transfer.png](prompt_transfer.png)" in md and "## Prompts" in md and "Near-ties" in md
    four = next(f for f in results["findings"] if f["id"] == "4")
    assert f"| 4 (constrained) | {four['constrained']['claim']} | **{four['constrained']['verdict']}** |" in md
    assert md.index("## Steering judged as control") < md.index("## Steering, constrained")
    assert (workdir / "steering_cost.png").stat().st_size > 1000


def test_items_and_clean_evaluation(study, env):
    cfg, workdir, results = study
    pred = np.load(workdir / "predictions.npz")
    labels = pred["labels"]
    test = tfds.data_source("synthetic_prosody/tiny", split="test", data_dir=str(env[1]), download=False)
    assert results["data"]["eval_items"] == len(labels) == min(len(test), cfg.max_eval_items)
    assert sorted(pred["ids"].tolist()) == sorted(r["id"].decode() for r in test)  # every test item, once
    names = tiny_reference.LABELS
    by_id = {r["id"].decode(): names.index(r["label"].decode()) for r in test}
    assert labels.tolist() == [by_id[i] for i in pred["ids"].tolist()]
    assert pred["clean_logp"].shape == (2, len(labels), len(names))  # two prompts under :local
    assert (pred["clean_logp"][0].argmax(-1) == pred["clean_preds"]).all()
    assert results["clean"]["accuracy"] == pytest.approx(np.mean(pred["clean_preds"] == labels))
    assert results["identification"]["items_seen"] == results["identification"]["items_kept"]  # filter off
    assert sum(results["identification"]["items_seen"]) == 2 * 8  # the tiny corpus' train split, under two prompts


def test_deactivation_consistent_with_predictions(study):
    cfg, workdir, results = study
    pred = np.load(workdir / "predictions.npz")
    labels, clean = pred["labels"], pred["clean_preds"]
    deact = pred["deactivate_logp"][0].argmax(-1)  # the first prompt's [S, K, 1 + R, E, N]
    e = len(tiny_reference.LABELS)
    base = recall(labels, clean, e)
    ks = [f"{float(k):g}" for k in cfg.ks.split("+")]
    assert deact.shape[:4] == (len(results["selectors"]), len(ks), 1 + len(cfg.random_seeds.split("+")), e)
    for s, name in enumerate(results["selectors"]):
        for j, k in enumerate(ks):
            d = results["selectors"][name]["k"][k]["deactivation"]
            delta = np.stack([recall(labels, deact[s, j, 0, m], e) - base for m in range(e)])
            np.testing.assert_allclose(np.array(d["delta"], float), delta)
            off = ~np.eye(e, dtype=bool)
            cross = np.array([delta[m][off[m]].mean() for m in range(e)])
            np.testing.assert_allclose(d["self"], np.diag(delta))
            np.testing.assert_allclose(d["cross"], cross)
            assert d["mean_specificity"] == pytest.approx(np.mean(np.diag(delta) - cross))
            rnd = np.mean([[recall(labels, deact[s, j, r, m], e) - base for m in range(e)]
                           for r in range(1, deact.shape[2])], axis=0)
            np.testing.assert_allclose(np.array(d["random"]["delta"], float), rnd)
            assert d["ci"][0] <= d["mean_specificity"] <= d["ci"][1]
            assert 0 < d["p_permutation"] <= 1 and 0 < d["p_empirical"] <= 1


def test_masks_and_random_controls(study):
    cfg, workdir, results = study
    m = np.load(workdir / "masks.npz")
    masks = m["masks"]  # [S, K, 1 + R, E, L, I]
    s_, k_, r1, e, layers, neurons = masks.shape
    assert (layers, neurons) == (results["model"]["layers"], results["model"]["neurons"]) == (2, 64)
    per_layer = masks.sum(-1)
    assert (per_layer[:, :, 1:] == per_layer[:, :, :1]).all()  # matched count in every layer
    for s, name in enumerate(results["selectors"]):
        for j, k in enumerate(cfg.ks.split("+")):
            counts = masks[s, j, 0].sum((1, 2))
            if name != "lape":  # top-k selectors: round(k · L · I) per emotion
                assert (counts == max(1, round(float(k) * layers * neurons))).all()
            assert results["selectors"][name]["k"][f"{float(k):g}"]["count_per_emotion"] == counts.tolist()
            for r in range(1, r1):  # controls are other neurons, drawn anew per seed
                assert counts.sum() == 0 or not (masks[s, j, r] == masks[s, j, 0]).all()
    main = int(cfg.main_k)
    for s, name in enumerate(results["selectors"]):
        assert results["layers"]["per_selector"][name] == masks[s, main, 0].sum((0, 2)).tolist()
    jac = np.array(results["overlaps"]["selectors"], float)
    assert np.allclose(np.diag(jac)[~np.isnan(np.diag(jac))], 1.0) and np.allclose(jac, jac.T, equal_nan=True)


def _spec(labels, clean, masked, e):
    """Mean over emotions of self − cross, masked [E, N] (row m: emotion m's mask ablated)."""
    base = recall(labels, clean, e)
    delta = np.stack([recall(labels, masked[m], e) - base for m in range(e)])
    off = ~np.eye(e, dtype=bool)
    return np.mean([delta[m, m] - delta[m][off[m]].mean() for m in range(e)])


def test_per_prompt_numbers_and_prompt_transfer(study):
    cfg, workdir, results = study
    pred = np.load(workdir / "predictions.npz")
    labels, e, main = pred["labels"], len(tiny_reference.LABELS), int(cfg.main_k)
    clean = pred["clean_logp"].argmax(-1)  # [P, N]
    deact = pred["deactivate_logp"].argmax(-1)  # [P, S, K, 1 + R, E, N]
    assert [p["name"] for p in results["per_prompt"]] == ["asked", "which"] == [p["name"] for p in results["prompts"]]
    which = results["prompts"][1]["question"]
    assert which.startswith("Which emotion") and ", ".join(reversed(tiny_reference.LABELS[1:])) in which
    for p, numbers in enumerate(results["per_prompt"]):
        assert numbers["clean"]["accuracy"] == pytest.approx(np.mean(clean[p] == labels))
        for s, name in enumerate(results["selectors"]):
            got = numbers["deactivation"][name]["mean_specificity"]
            assert got == pytest.approx(_spec(labels, clean[p], deact[p, s, main, 0], e))
    # Each prompt's own selection, ablated under every prompt: [P (under), P (selected on), S, E, N].
    moved = pred["prompt_transfer_logp"].argmax(-1)
    prompt_masks = np.load(workdir / "masks.npz")["prompt_masks"]  # [P, S, E, L, I]
    assert moved.shape[:4] == (2, 2, len(results["selectors"]), e) and prompt_masks.shape[:3] == moved.shape[1:4]
    pairs = results["prompt_transfer"]["pairs"]
    assert [(x["selected_on"], x["under"]) for x in pairs] == [("which", "asked"), ("asked", "which")]
    for x, (q, p) in zip(pairs, ((0, 1), (1, 0)), strict=True):
        for s, name in enumerate(results["selectors"]):
            v = x["selectors"][name]
            assert v["specificity_transferred"] == pytest.approx(_spec(labels, clean[q], moved[q, p, s], e))
            assert v["specificity_own"] == pytest.approx(_spec(labels, clean[q], moved[q, q, s], e))
    assert (workdir / "prompt_transfer.png").stat().st_size > 1000


def test_steering_and_agnostic_consistent(study):
    cfg, workdir, results = study
    pred = np.load(workdir / "predictions.npz")
    labels, clean = pred["labels"], pred["clean_preds"]
    steer = pred["steer_logp"][0].argmax(-1)  # [S, A, E, N]
    steer_random = pred["steer_random_logp"][0].argmax(-1)  # [S, R, E, N] at the largest α
    union_mix = pred["agnostic_logp"][0].argmax(-1)  # [S, 2, A, N]
    alphas = [float(a) for a in cfg.alphas.split("+")]
    e = len(tiny_reference.LABELS)
    assert steer_random.shape[1] == len(cfg.random_seeds.split("+")) == 3

    def rate(p, t):
        other = labels != t
        return np.mean(p[other] == t)

    items = np.arange(len(labels))
    for s, name in enumerate(results["selectors"]):
        v = results["steering"][name]
        assert v["alphas"] == [0.0, *alphas]
        want = [np.mean([rate(clean, t) for t in range(e)])]
        want += [np.mean([rate(steer[s, a, t], t) for t in range(e)]) for a in range(len(alphas))]
        np.testing.assert_allclose(v["mean_esn"], want)
        gaps = [want[-1] - np.mean([rate(steer_random[s, r, t], t) for t in range(e)]) for r in range(3)]
        np.testing.assert_allclose(v["gap_per_seed"], gaps, atol=1e-12)
        uar = np.nanmean(recall(labels, clean, e))
        # Targeted: each item under its own label's mask; 2-Pass: under its clean prediction's (steering rows).
        strategies = {"targeted": steer[s][:, labels, items], "union": union_mix[s, 0], "mix": union_mix[s, 1],
                      "two_pass": steer[s][:, clean, items]}
        for strategy, p in strategies.items():
            got = results["agnostic"][name][strategy]["delta_uar"]
            np.testing.assert_allclose(got, [np.nanmean(recall(labels, p[a], e)) - uar for a in range(len(alphas))])


def test_free_form_steering_consistent(study):
    """The free-form steering numbers recomputed from predictions.npz with plain numpy: each answer's score from its
    stored parse, count of labels named, frame loss and repetition; the α chosen on the selection half; every random
    control at the ESNs' plain-text damage; label mass from the stored log-probs; DiffMean from the stored
    statistics."""
    cfg, workdir, results = study
    pred = dict(np.load(workdir / "predictions.npz"))
    free = {k.split("__", 1)[1]: v for k, v in pred.items() if k.startswith("free__")}
    s_, r_, a_, f_, e = (int(x) for x in free["layout"])
    labels = free["labels"]
    n = len(labels)
    assert free["parsed"].shape == (2, 1 + s_ * a_ * e + s_ * r_ * a_ * e + 2 * f_ * e, n)  # two prompts
    out = results["steering_free"]
    sel = np.array(out["selection"])
    assert out["items"] == n and np.array_equal(np.bincount(labels[sel]), np.bincount(labels) // 2)
    loss = free["loss"][0]
    clean = loss[0][~np.isnan(loss[0])]
    ref = np.quantile(clean, 0.95) if clean.size else np.nan

    def mean_score(v0, cols):
        """Mean score over (target, item) pairs, items in cols, of variants v0 + t (t = target)."""
        got = [by_hand(free["parsed"][0, v0 + t, i], free["named"][0, v0 + t, i], loss[v0 + t, i],
                       free["repetition"][0, v0 + t, i], t, ref)
               for t in range(e) for i in np.flatnonzero(cols) if labels[i] != t]
        return np.mean(got)

    def clean_score(cols):
        return np.mean([by_hand(free["parsed"][0, 0, i], free["named"][0, 0, i], loss[0, i],
                                free["repetition"][0, 0, i], t, ref)
                        for t in range(e) for i in np.flatnonzero(cols) if labels[i] != t])
    alphas = [0.0, *[float(a) for a in cfg.alphas.split("+")]]
    damage = free["damage"]
    assert damage[0] == 0.0
    for s, name in enumerate(results["selectors"]):
        v = out["selectors"][name]
        esn = [1 + (s * a_ + a) * e for a in range(a_)]
        on_sel = [clean_score(sel), *(mean_score(v0, sel) for v0 in esn)]
        on_rep = [clean_score(~sel), *(mean_score(v0, ~sel) for v0 in esn)]
        np.testing.assert_allclose(v["selection"], on_sel)
        np.testing.assert_allclose(v["reported"], on_rep)
        best = max(range(1, len(alphas)), key=lambda a: (round(on_sel[a], 12), -a))
        assert v["chosen_alpha"] == alphas[best] and v["steering_score"] == pytest.approx(on_rep[best])
        cost = [0.0, *(damage[v0:v0 + e].mean() for v0 in esn)]
        assert v["text_damage"] == pytest.approx(cost[best])
        for j, c in enumerate(v["controls"]):
            rows = [1 + s_ * a_ * e + ((s * r_ + j) * a_ + a) * e for a in range(a_)]
            curve = [0.0, *(damage[v0:v0 + e].mean() for v0 in rows)]
            scores = [clean_score(~sel), *(mean_score(v0, ~sel) for v0 in rows)]
            for i in range(len(curve) - 1):  # the first segment of the control's grid that brackets the ESNs' cost
                lo, hi = curve[i], curve[i + 1]
                if min(lo, hi) <= cost[best] <= max(lo, hi):
                    f = 0.0 if hi == lo else (cost[best] - lo) / (hi - lo)
                    want = (1 - f) * scores[i] + f * scores[i + 1]
                    assert c["within_grid"] and c["alpha"] == pytest.approx((1 - f) * alphas[i] + f * alphas[i + 1])
                    break
            else:
                end = len(curve) - 1 if cost[best] > max(curve) else int(np.argmin(curve))
                want = scores[end]
                assert not c["within_grid"]
            assert c["steering_score"] == pytest.approx(want)
    # label mass: the total probability on the labels, from the stored log-probs (score mode)
    np.testing.assert_allclose(pred["costs__steer"][..., 1], np.exp(pred["steer_logp"]).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(pred["costs__clean_mass"], np.exp(pred["clean_logp"]).sum(-1), rtol=1e-5)
    assert (pred["costs__deactivate"][..., 0] >= -1e-6).all()  # KL
    # DiffMean: each emotion's mean over its identification tokens minus the others', pooled over the prompts
    stats = [np.load(p) for p in sorted((workdir / "runs" / results["config_hash"] / "stats").glob("A_p*.npz"))]
    total = sum(x["sum"].astype(np.float64) for x in stats)
    tokens = sum(x["tokens"].astype(np.float64) for x in stats)
    for t in range(e):
        rest = [u for u in range(e) if u != t]
        want = total[t] / max(tokens[t], 1) - total[rest].sum(0) / max(tokens[rest].sum(), 1)
        np.testing.assert_allclose(free["diffmean_vectors"][t], want, rtol=1e-5, atol=1e-6)


def test_stability_grid_and_float_noise(study):
    """Every finding carries its grid verdict; the grid's sizes follow the config; near-ties are counted from the
    stored log-probs; and noise of 1e-5 (cross-machine float differences) on every stored log-probability changes
    no verdict the grid calls holds or does not hold."""
    cfg, workdir, results = study
    seeds, n_prompts, draws = 3, 2, int(cfg.resamples)
    def word(holds_in, size):
        share = holds_in / size
        return "holds" if share >= 0.8 else "fragile" if share >= 0.2 else "does not hold"
    for f in [*results["findings"], next(f for f in results["findings"] if f["id"] == "4")["constrained"]]:
        size = seeds * n_prompts * draws if f["id"] in ("1", "2", "3", "4", "4c") else n_prompts * draws
        assert f["grid_size"] == size and 0 <= f["holds_in"] <= size
        if not f.get("per_selector"):
            assert f["verdict"] == word(f["holds_in"], size)
            continue
        # Each selector counted alone; holds only with its point test passing Holm over the selectors.
        p = {s: v["p"] for s, v in f["per_selector"].items()}
        order = sorted((x, s) for s, x in p.items() if x is not None)
        holm = {s: min(1.0, max((len(order) - i) * x for i, (x, _) in enumerate(order[:order.index((p[s], s)) + 1])))
                for s in p if p[s] is not None}
        for s, v in f["per_selector"].items():
            assert v["grid_size"] == size and v["p_holm"] == pytest.approx(holm.get(s))
            want = word(v["holds_in"], size)
            passed = v["point"] and s in holm and holm[s] < 0.05
            assert v["verdict"] == ("fragile" if want == "holds" and not passed else want), (f["id"], s)
        ranks = {"holds": 3, "fragile": 2, "does not hold": 1}
        assert f["verdict"] == max((v["verdict"] for v in f["per_selector"].values()), key=ranks.get)
        assert (f["selector"] is None) == (f["verdict"] == "does not hold")
    pred, masks = dict(np.load(workdir / "predictions.npz")), dict(np.load(workdir / "masks.npz"))
    ev = Evidence.load(pred, masks)
    logp = pred["deactivate_logp"]
    top = np.sort(logp, -1)
    assert results["near_ties"]["deactivate"] == {"evaluations": int(np.prod(logp.shape[:-1])),
                                                  "near_ties": int((top[..., -1] - top[..., -2] < 1e-4).sum()),
                                                  "share": pytest.approx(np.mean(top[..., -1] - top[..., -2] < 1e-4))}
    base = {k: results[k] for k in ("config", "config_hash", "model", "prompts", "data", "identification", "answer",
                                    "says", "sizing")}
    base["transfer"] = {"dataset": results["transfer"]["dataset"]}
    again = analyze(ev, base, cfg)
    assert json.loads(json.dumps(again)) == json.loads((workdir / "results.json").read_text())  # from the arrays alone
    rng = np.random.default_rng(0)
    noisy = analyze(ev.with_logp(lambda x: x + rng.uniform(-1e-5, 1e-5, x.shape).astype(x.dtype)), base, cfg)
    for f, g in zip(results["findings"], noisy["findings"], strict=True):
        if f["verdict"] in ("holds", "does not hold"):
            assert g["verdict"] == f["verdict"], f["id"]


def test_transfer_consistent(study):
    cfg, workdir, results = study
    pred = np.load(workdir / "predictions.npz")
    labels = pred["transfer_labels"]
    clean, preds = pred["transfer_clean_logp"][0].argmax(-1), pred["transfer_logp"][0].argmax(-1)  # first prompt
    e = len(tiny_reference.LABELS)
    t = results["transfer"]
    assert t["eval_items"] == len(labels) == 8
    masks = np.load(workdir / "masks.npz")
    main, transfer_masks = masks["masks"][:, int(cfg.main_k), 0], masks["transfer_masks"]
    for s, name in enumerate(results["selectors"]):
        v = t["selectors"][name]
        assert v["specificity_transferred"] == pytest.approx(_spec(labels, clean, preds[s, 0], e))
        assert v["specificity_own"] == pytest.approx(_spec(labels, clean, preds[s, 1], e))
        both = [(main[s, i] | transfer_masks[s, i]).sum() for i in range(e)]
        if all(both):
            assert v["jaccard"] == pytest.approx(np.mean([(main[s, i] & transfer_masks[s, i]).sum() / both[i]
                                                          for i in range(e)]))
    six_b = next(f for f in results["findings"] if f["id"] == "6b")
    assert six_b["verdict"] != "not tested" and (workdir / "transfer.png").exists()


def test_collateral_consistent(study, env):
    """The plain-text loss recomputed by folding masks into down_proj, the Δloss summaries recomputed in numpy,
    and the verdict withheld: the stand-in's word-level tokenizer knows none of the prompts' words."""
    cfg, workdir, results = study
    c = results["collateral"]
    pred = np.load(workdir / "predictions.npz")
    clean, masked = pred["collateral_clean"], pred["collateral_masked"]
    masks = np.load(workdir / "masks.npz")["masks"]  # [S, K, 1 + R, E, L, I]
    assert clean.shape == (len(PLAIN_TEXT),) == (c["prompts"],) and masked.shape == (*masks.shape[:4], len(PLAIN_TEXT))
    module, params = ports.load(env[0])
    tokenizer = prompts.load_tokenizer(env[0])
    tok = tokenizer(list(PLAIN_TEXT), padding=True, padding_side="right", add_special_tokens=False, return_tensors="np")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    assert ids.shape[1] <= 32
    ones = np.ones(masks.shape[-2:])
    np.testing.assert_allclose(clean, direct_loss(module, params, ids, mask, ones), rtol=1e-4)
    main = int(cfg.main_k)
    for r in (0, 1):  # an ESN mask and its first random control
        np.testing.assert_allclose(masked[0, main, r, 1], direct_loss(module, params, ids, mask,
                                                                      ones - masks[0, main, r, 1]), rtol=1e-4)
    assert not np.allclose(masked[0, main, 0, 1], clean)
    assert c["clean_loss"] == pytest.approx(clean.mean())
    for s, name in enumerate(results["selectors"]):
        for j, k in enumerate(results["selectors"][name]["k"]):
            v = c["selectors"][name]["k"][k]
            delta = masked[s, j].mean(-1) - clean.mean()  # [1 + R, E]
            np.testing.assert_allclose(v["delta_esn"], delta[0], atol=1e-6)
            np.testing.assert_allclose(v["delta_random"], delta[1:], atol=1e-6)
            assert v["mean_random"] == pytest.approx(delta[1:].mean())
            assert v["max_random"] == pytest.approx(delta[1:].mean(1).max())
            empty = ~masks[s, j].any((-2, -1))  # e.g. LAPE keeping no neuron: ablating nothing costs nothing
            np.testing.assert_allclose(delta[empty], 0.0, atol=1e-6)
    unknown = ((ids == tokenizer.unk_token_id) & (mask == 1)).sum() / mask.sum()
    assert c["unknown_share"] == pytest.approx(unknown) and unknown > analysis.MAX_UNKNOWN_SHARE
    assert not c["measured"] and c["specific_at_main_k"] is None
    assert all(v["specific"] is None for sv in c["selectors"].values() for v in sv["k"].values())
    md = (workdir / "report.md").read_text()
    assert "## Beyond the paper: collateral damage on plain text" in md and "Not judged" in md


def test_collateral_verdict_when_measured(study):
    """With a tokenizer that knows the words, specific = finding 1's emotion-specific rule and ESN Δloss at most
    the costliest random control's (the rule recomputed from the raw numbers)."""
    cfg, workdir, results = study
    pred = np.load(workdir / "predictions.npz")
    clean, masked = pred["collateral_clean"], pred["collateral_masked"].copy()
    r = copy.deepcopy(results)
    main, k = int(cfg.main_k), r["main_k"]
    first, second = list(r["selectors"])[:2]
    masked[0, main, 0] += 1.0  # the first selector's ESNs cost the LM more than any random control
    masked[1, main, 0] = clean - 1.0  # the second's cost less, and their ablation is made emotion-specific
    r["selectors"][second]["k"][k]["deactivation"].update(ci=[-0.5, -0.1], mean_specificity=-0.3)
    r["selectors"][second]["k"][k]["deactivation"]["random"]["specificity_per_seed"] = [0.0, 0.0]
    c = analysis.collateral(r, clean, masked, 0.0)
    assert c["measured"]
    for s, name in enumerate(r["selectors"]):
        for j, (kk, sel) in enumerate(r["selectors"][name]["k"].items()):
            d = sel["deactivation"]
            hurts = (d["ci"][1] is not None and d["ci"][1] < 0
                     and d["mean_specificity"] < min(d["random"]["specificity_per_seed"]))
            delta = masked[s, j].mean(-1) - clean.mean()
            spares = delta[0].mean() <= delta[1:].mean(1).max()
            assert c["selectors"][name]["k"][kk]["specific"] == (hurts and spares)
    assert c["selectors"][first]["k"][k]["spares_language"] is False
    assert c["selectors"][second]["k"][k]["specific"] is True
    assert second in c["specific_at_main_k"] and first not in c["specific_at_main_k"]
    md = report.markdown(report.collateral_blocks({**r, "collateral": c}))
    assert f"specific in this sense: {c['specific_at_main_k']}" in md
    assert md.count(f"| {first} |") == len(r["selectors"][first]["k"])  # one row per k


def greedy_answers(model, batch: dict, max_new_tokens: int) -> list[str]:
    """Every row's greedy answer to a stored batch, decoded: the study's free answers, computed directly."""
    import esn_jax

    ids, lengths = esn_jax.generate(model.module, model.params, adapters.model_inputs(batch), max_new_tokens,
                                    stop_token_ids=prompts.stop_token_ids(model.tokenizer),
                                    pad_token_id=model.tokenizer.pad_token_id)
    return [model.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            for row, n in zip(np.asarray(ids), np.asarray(lengths), strict=True)]


def test_what_the_model_says(study):
    """One clip per emotion that has evaluation items, each with its answers under every intervention; the clean
    answer is what greedy generation of that clip's batch writes, recomputed here."""
    cfg, workdir, results = study
    says, labels = results["says"], results["model"]["labels"]
    present = set(np.load(workdir / "predictions.npz")["labels"].tolist())
    assert [c["label"] for c in says["clips"]] == [w for i, w in enumerate(labels) if i in present]
    alpha = f"{says['alpha']:g}"
    variants = ["clean"] + [f"{w} {kind}" for w in labels
                            for kind in (f"ESNs ×(1+{alpha})", f"random ×(1+{alpha})", "ESNs ablated")]
    model = adapters.load_model(cfg)
    by_id = {}
    for path in sorted(workdir.glob("runs/*/batches/A_test_p0/0*.npz")):
        batch = dict(np.load(path))
        by_id |= dict(zip(batch["ids"].tolist(), greedy_answers(model, batch, says["max_new_tokens"]), strict=True))
    md = (workdir / "report.md").read_text()
    assert "## What the model says" in md
    for clip in says["clips"]:
        assert [a["variant"] for a in clip["answers"]] == variants
        assert clip["answers"][0]["text"] == by_id[clip["id"]]
        assert f"Clip `{clip['id']}` (label **{clip['label']}**)" in md


def test_study_sizes_itself(env, tmp_path):
    """batch_size=auto and variant_chunk=auto under a budget: the batch is the largest whose one-variant sweep fits
    (resolved before the batches are written, which have that many rows), every sweep's chunk the largest that
    fits, evened out over the calls it needs (recomputed here with esn_jax.sizing), all in results.json; a run
    resumed with stages deleted reports the same sizes, byte for byte."""
    import shutil

    from esn_jax import sizing
    from experiments.study import sizes

    ref, data_dir = env
    # Short answers: the budget is sized to the scoring sweep, and generation must fit it too.
    keys = dict(prompts="asked", selectors="lap", random_seeds="0", bootstrap=20, permutations=20, resamples=2,
                answer_tokens=2, says_tokens=2)
    probe = get_config(study_args(ref, data_dir, **keys))
    model = adapters.load_model(probe)
    examples = list(pipeline.read(adapters.ensure_dataset("synthetic_prosody", "tiny", str(data_dir), ""), "train",
                                  str(data_dir), "four"))
    from experiments.study.steering.stages import prompting_questions
    asked = [model.question, *(q for w in model.labels for q in prompting_questions([model.question], w))]
    length = sizes.prompt_length(model, examples, asked, probe)  # the prompting baseline's questions are longer

    def sweep(rows, chunk):  # the study's sweeps measure drift
        return sizing.sweep_bytes(model.module, model.params, rows, length, chunk, model.label_token_ids, drift=True)

    def generate(rows, chunk):
        return sizing.generate_bytes(model.module, model.params, rows, length, chunk, 2)

    def fits(rows):  # batch_size=auto: one variant's sweep and generation
        return sweep(rows, 1) <= budget and generate(rows, 1) <= budget

    budget = max(sweep(3, 4), generate(3, 1))
    cfg = get_config(study_args(ref, data_dir, batch_size="auto", memory_budget=budget, **keys))
    results = run(cfg, tmp_path)
    sized = results["sizing"]
    n = sized["batch_size"]["resolved"]
    assert (sized["backend"], sized["budget_bytes"], sized["variant_chunk"]) == ("cpu", budget, "auto")
    assert sized["batch_size"]["length"] == length and 3 <= n < sized["batch_size"]["cap"]
    assert fits(n) and not fits(n + 1)
    assert results["config"]["batch_size"] == "auto" and results["config"]["variant_chunk"] == "auto"
    (run_dir,) = (tmp_path / "runs").iterdir()
    first = np.load(run_dir / "batches" / "A_train_p0" / "00000.npz")
    assert first["input_ids"].shape[0] == n
    programs = {p["program"] for p in sized["programs"]}
    assert {"score", "generate", "collateral"} <= programs  # the says stage generates in score mode too
    for p in sized["programs"]:
        assert p["bytes"] <= budget and p["halved"] == []
        if p["program"] == "score" and p["length"] == length:
            c, v = p["chunk"], p["variants"]
            largest = max(n for n in range(1, v + 1) if sweep(p["batch"], n) <= budget)
            assert sweep(p["batch"], c) == p["bytes"] and c == -(-v // -(-v // largest))  # evened out
    once = (tmp_path / "results.json").read_bytes()
    for done in ("steer", "agnostic", "says.npz", "collateral.npz"):
        shutil.rmtree(run_dir / done) if (run_dir / done).is_dir() else (run_dir / done).unlink()
    run(cfg, tmp_path)
    assert (tmp_path / "results.json").read_bytes() == once


def test_free_form_answers(env, tmp_path):
    """answer=generate end to end: every prediction is the parser's reading of the greedy answer (recomputed here
    from the stored batches), the unparsed answers are counted as wrong, and the report says the mode."""
    from experiments.study import answers

    ref, data_dir = env
    cfg = get_config(study_args(ref, data_dir, answer="generate", answer_tokens=3, says_tokens=3, prompts="asked",
                                selectors="lap", random_seeds="0"))
    results = run(cfg, tmp_path)
    model = adapters.load_model(cfg)
    expected = []
    for path in sorted(tmp_path.glob("runs/*/batches/A_test_p0/0*.npz")):
        batch = dict(np.load(path))
        texts = greedy_answers(model, batch, 3)
        expected += [answers.parse(texts[r], model.labels) for r in np.flatnonzero(batch["valid"])]
    expected = np.array(expected)
    pred = np.load(tmp_path / "predictions.npz")
    np.testing.assert_array_equal(pred["clean_preds"], expected)
    labels = pred["labels"]
    assert results["answer"]["mode"] == "generate" and results["answer"]["max_new_tokens"] == 3
    assert results["clean"]["unparsed"] == pytest.approx(np.mean(expected == -1))
    assert results["clean"]["accuracy"] == pytest.approx(np.mean(expected == labels))
    e = len(model.labels)
    deact = pred["deactivate_logp"][0, 0, 0, 0]  # [E, N, E]: the lap ESNs, each emotion's ablated
    masked = np.where(np.isneginf(deact).all(-1), -1, deact.argmax(-1))
    delta = np.stack([recall(labels, masked[m], e) - recall(labels, expected, e) for m in range(e)])
    got = np.array(results["selectors"]["lap"]["k"][results["main_k"]]["deactivation"]["delta"], dtype=float)
    np.testing.assert_allclose(got, delta, equal_nan=True)
    md = (tmp_path / "report.md").read_text()
    assert "Answers: free-form (greedy, at most 3 new tokens)" in md and "unparsed" in md


def test_shipped_reference_with_success_filter(env, tmp_path):
    """The default checkpoint (the mini-LALM) through the study, success filter on: the items kept per emotion
    are the identification items the clean model labels correctly."""
    import esn_jax

    # One random seed, one steering strength, few free-form answers: the assertions are about the identification items.
    cfg = get_config(f"local,data_dir={env[1]},dataset_config=tiny,buckets=4,selectors=lap+cas,ks=0.01,main_k=0,"
                     "random_seeds=0,alphas=4,diffmean_factors=4,steer_items=8")
    results = run(cfg, tmp_path)
    assert results["model"]["name"] == "audio_flamingo3" and results["model"]["layers"] == 30
    module, params = mini_lalm.load(cfg.checkpoint)[:2]
    label_ids = json.loads((Path(cfg.checkpoint) / "reference.json").read_text())["label_token_ids"]
    correct = np.zeros((2, len(label_ids)), int)  # per prompt: the statistics pool over the two of :local
    seen = np.zeros(len(label_ids), int)
    for p in range(2):
        for path in sorted((tmp_path / "runs").glob(f"*/batches/A_train_p{p}/0*.npz")):
            batch = dict(np.load(path))
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "valid", "ids")}
            preds = np.asarray(esn_jax.score_labels(module, params, inputs, label_ids)).argmax(-1)
            ok = (preds == batch["labels"]) & batch["valid"]
            np.add.at(correct[p], batch["labels"][ok], 1)
            np.add.at(seen, batch["labels"][batch["valid"]], 1)
    assert results["identification"]["items_seen"] == seen.tolist() == [4, 4, 4, 4]
    assert results["identification"]["items_kept_per_prompt"] == correct.tolist()
    assert results["identification"]["items_kept"] == correct.sum(0).tolist()
    assert results["clean"]["accuracy"] > 0.5  # a trained model, not chance


def _cli(workdir, args, crash=None):
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    env.pop("ESN_STUDY_CRASH_AFTER", None)
    if crash:
        env["ESN_STUDY_CRASH_AFTER"] = crash
    return subprocess.run([sys.executable, "-m", "experiments.run_study", f"--workdir={workdir}",
                           f"--config=configs/study.py:{args}", "--mesh=data:1"], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_resume_after_kill_gives_identical_results(env, study, tmp_path):
    # Two batches per split, so that the crash points fall in the middle of stages.
    args = study_args(*env, batch_size=4)
    once = _cli(tmp_path / "once", args)
    assert once.returncode == 0, once.stderr
    assert f"report: {tmp_path / 'once' / 'report.md'}" in once.stdout and "finding 1:" in once.stdout
    for crash in ("stats/A_p0:0", "steer/p1:0", "collateral:0"):  # mid-statistics (running sums), mid per-batch stage
        killed = _cli(tmp_path / "resumed", args, crash)
        assert killed.returncode == 75, killed.stderr
        assert not (tmp_path / "resumed" / "results.json").exists()
        if crash.startswith("stats"):  # the running sums were saved after the first of the two batches
            (stats,) = (tmp_path / "resumed" / "runs").glob("*/stats/A_p0.npz")
            assert int(np.load(stats)["next_batch"]) == 1
    (text,) = (tmp_path / "resumed" / "runs").glob("*/collateral.npz")
    written = text.stat()
    resumed = _cli(tmp_path / "resumed", args)
    assert resumed.returncode == 0, resumed.stderr
    assert (text.stat().st_ino, text.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # skipped
    assert (tmp_path / "resumed" / "results.json").read_bytes() == (tmp_path / "once" / "results.json").read_bytes()
    a, b = np.load(tmp_path / "once" / "predictions.npz"), np.load(tmp_path / "resumed" / "predictions.npz")
    assert a.files == b.files  # bit for bit; NaN (an empty answer's frame loss) equal to NaN
    assert [k for k in a.files if not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")] == []


def test_sharded_run_matches(study, env, tmp_path):
    from ports import sharding

    cfg, workdir, results = study
    sharded = run(cfg, tmp_path, sharding.make_mesh(data=2, model=2))
    one, two = np.load(workdir / "predictions.npz"), np.load(tmp_path / "predictions.npz")
    np.testing.assert_allclose(two["clean_logp"], one["clean_logp"], atol=1e-4)
    assert sharded["identification"] == results["identification"]
    # Near-ties may flip a few of thousands of masked predictions; nearly all must agree.
    assert np.mean(two["deactivate_logp"].argmax(-1) == one["deactivate_logp"].argmax(-1)) > 0.95
    lap = list(sharded["selectors"]).index("lap")
    m1, m2 = np.load(workdir / "masks.npz")["masks"], np.load(tmp_path / "masks.npz")["masks"]
    assert (m1[lap, :, 0] == m2[lap, :, 0]).mean() > 0.99


@pytest.fixture(scope="module")
def kimi(tmp_path_factory):
    return tiny_kimi.build(tmp_path_factory.mktemp("kimi"))


def test_kimi_audio_end_to_end(env, kimi, tmp_path):
    """Kimi-Audio through ``python -m experiments.run_study`` from its three directories (tiny random model, tiny
    tiktoken text tokenizer, tiny GLM-4-Voice tokenizer): every stage runs and the report is written. The saved
    batches hold each clip's codes in the audio stream: the speech tokenizer applied to the clip as GLM-4-Voice's
    own recipe feeds it (no padding to 30 s), + the offset, in Kimi's two-stream layout."""
    paths = kimi
    args = study_args(paths["checkpoint"], env[1], tokenizer=paths["tokenizer"],
                      speech_tokenizer=paths["speech_tokenizer"], selectors="mad+grad", model="kimi_audio")
    done = _cli(tmp_path / "work", args)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["model"]["name"] == "kimi_audio" and results["model"]["layers"] == 2
    assert [f["id"] for f in results["findings"]] == list(FINDINGS)
    assert (tmp_path / "work" / "report.md").stat().st_size > 1000
    assert results["collateral"]  # the plain text went through Kimi's text stream

    tokenizer = prompts.load_tokenizer(paths["tokenizer"])
    ids = prompts.kimi_audio_tokens(tokenizer)
    speech, speech_params = ports.load(paths["speech_tokenizer"])
    offset = ports.load(paths["checkpoint"])[0].config.token_offset
    clips = {ex.id: ex.wave for ex in pipeline.read("synthetic_prosody/tiny", "test", str(env[1]), "four")}
    checked = 0
    for path in sorted((tmp_path / "work" / "runs").glob("*/batches/A_test_p*/0*.npz")):  # two prompts
        batch = dict(np.load(path))
        for row in np.flatnonzero(batch["valid"]):
            clip = clips[str(batch["ids"][row])]
            feats = features.extractor(16)([clip], sampling_rate=16000, padding="longest", pad_to_multiple_of=1280,
                                           return_attention_mask=True, return_tensors="np")
            codes, valid = speech.apply({"params": speech_params}, feats["input_features"], feats["attention_mask"])
            want = np.asarray(codes)[np.asarray(valid)] + offset
            cont = batch["is_continuous_mask"][row]
            np.testing.assert_array_equal(batch["input_ids"][row][cont], want)
            assert (batch["text_input_ids"][row][cont] == ids["<|im_kimia_text_blank|>"]).all()
            start = np.flatnonzero(batch["attention_mask"][row])[0]
            assert batch["input_ids"][row][start] == ids["<|im_kimia_user_msg_start|>"]
            assert batch["input_ids"][row][-1] == ids["<|im_kimia_assistant_msg_start|>"]
            checked += 1
    assert checked == 2 * results["data"]["eval_items"]


def test_kimi_audio_inputs_are_checked_by_name(env, kimi, tmp_path):
    def load(**keys):
        return adapters.load_model(get_config(study_args(kimi["checkpoint"], env[1], **keys)))

    with pytest.raises(ValueError, match="model=kimi_audio needs speech_tokenizer=DIR"):
        load(tokenizer=kimi["tokenizer"])
    with pytest.raises(FileNotFoundError, match="holds neither tokenizer.json .*, tiktoken.model .* nor tekken.json"):
        load(speech_tokenizer=kimi["speech_tokenizer"])  # the converted model holds no text tokenizer
    with pytest.raises(ValueError, match="holds a 'kimi_audio' checkpoint; expected glm4_voice_tokenizer"):
        load(tokenizer=kimi["tokenizer"], speech_tokenizer=kimi["checkpoint"])
    with pytest.raises(FileNotFoundError, match="holds neither port.json .* nor config.json"):
        load(tokenizer=kimi["tokenizer"], speech_tokenizer=tmp_path)
    model = load(tokenizer=kimi["tokenizer"], speech_tokenizer=kimi["speech_tokenizer"])
    assert model.module.config.text_blank_id == prompts.kimi_audio_tokens(model.tokenizer)["<|im_kimia_text_blank|>"]


def test_config():
    default = get_config()
    assert Path(default.checkpoint) == Path(REFERENCE_DIR) == mini_lalm.DEFAULT_DIR  # where the projector ships
    assert default.model == ""  # the checkpoint's own
    assert default.dataset == "synthetic_prosody" and not default.local
    local = get_config("local")
    assert local.local and local.max_id_items < default.max_id_items
    full = get_config("full")
    assert full.full and full.max_eval_items > default.max_eval_items
    assert len(full.ks.split("+")) > len(default.ks.split("+")) and len(full.alphas.split("+")) > 2
    with pytest.raises(ValueError, match="at most one of local and full"):
        get_config("local,full")
    cfg = get_config("model=audio_flamingo3,ks=0.1+0.2,main_k=0,success_filter=false,batch_size=4")
    assert (cfg.model, cfg.ks, cfg.main_k, cfg.success_filter, cfg.batch_size) == ("audio_flamingo3", "0.1+0.2", 0,
                                                                                   False, 4)
    with pytest.raises(ValueError, match=r"unknown study config keys \['huge'\]; known keys: \["):
        get_config("huge=1")
    with pytest.raises(ValueError, match="selectors"):
        get_config("selectors=lap+magic")
    with pytest.raises(ValueError, match="main_k=3"):
        get_config("ks=0.01,main_k=3")
    with pytest.raises(ValueError, match="model="):
        get_config("model=gpt")
    assert [get_config(f"model={m}").model for m in ("qwen2_audio", "voxtral")] == ["qwen2_audio", "voxtral"]


@pytest.fixture(scope="module")
def lalms(tmp_path_factory):
    """The tiny random Qwen2-Audio and Voxtral (tests/experiments/tiny_lalm.py): their study config keys."""
    root = tmp_path_factory.mktemp("lalm")
    return {"qwen2_audio": tiny_lalm.qwen2_audio(root / "qwen2_audio"), "voxtral": tiny_lalm.voxtral(root / "voxtral")}


def lalm_args(lalms, name: str, data_dir, **extra) -> str:
    paths = lalms[name]
    return study_args(paths["checkpoint"], data_dir, **{k: v for k, v in paths.items() if k != "checkpoint"}, **extra)


def audio_tokens(model: str, samples: int) -> int:
    """Audio placeholders of a clip of ``samples`` at 16 kHz, as each model's processor counts them: Qwen2-Audio's
    ((L − 1) // 2 + 1 − 2) // 2 + 1 on its L = ceil(samples / 160) valid mel frames; Voxtral's (mistral-common)
    375 per started 30-s window."""
    if model == "voxtral":
        return 375 * -(-samples // 480000)
    frames = -(-samples // 160)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


@pytest.mark.parametrize("name", ["qwen2_audio", "voxtral"])
def test_spliced_lalm_end_to_end(env, lalms, name, tmp_path):
    """Qwen2-Audio and Voxtral through ``python -m experiments.run_study`` (tiny random models, stand-in tokenizers
    with the real special tokens): every stage runs and the report is written. Each saved prompt is the model's
    chat layout holding as many audio placeholders as its processor writes for that clip (counted here from the
    clip's length), the feature dict holds only the port's forward kwargs, and the port's own forward on a stored
    batch (eager, so that it checks placeholders against audio tokens) gives the study's clean log-probs."""
    import esn_jax

    # One selector and one random seed: the backward pass (grad) and the controls are the shared decoder's, run end to
    # end on Kimi-Audio and the mini-LALM; this test is about each model's inputs.
    args = lalm_args(lalms, name, env[1], selectors="mad", random_seeds="0", prompts="asked", model=name)
    done = _cli(tmp_path / "work", args)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "work"
    results = json.loads((work / "results.json").read_text())
    assert results["model"]["name"] == name and results["model"]["layers"] == 2
    assert results["model"]["labels"] == ["neutral", "happy", "sad", "angry"]  # no reference.json: the four classes
    assert [f["id"] for f in results["findings"]] == list(FINDINGS)
    assert (work / "report.md").stat().st_size > 1000 and results["collateral"]

    model = adapters.load_model(get_config(args))
    tokenizer, token = model.tokenizer, model.tokenizer.convert_tokens_to_ids
    audio_id = model.module.config.audio_token_id
    clips = {ex.id: ex.wave for ex in pipeline.read("synthetic_prosody/tiny", "test", str(env[1]), "four")}
    keys = {"qwen2_audio": {"input_features", "feature_attention_mask"}, "voxtral": {"input_features"}}[name]
    checked = 0
    paths = sorted((work / "runs").glob("*/batches/A_test_p0/0*.npz"))
    for path in paths:
        batch = dict(np.load(path))
        assert set(adapters.model_inputs(batch)) == keys | {"input_ids", "attention_mask"}
        for row in np.flatnonzero(batch["valid"]):
            ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
            n = audio_tokens(name, clips[str(batch["ids"][row])].size)
            first = ids.index(audio_id)
            assert ids.count(audio_id) == n and ids[first:first + n] == [audio_id] * n
            if name == "qwen2_audio":  # ChatML with the template's default system turn
                text = tokenizer.decode(ids)
                assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                       "Audio 1: <|audio_bos|><|AUDIO|>")
                assert text.endswith(f"<|audio_eos|>\n{model.question}<|im_end|>\n<|im_start|>assistant\n")
            else:  # BOS, [INST], [BEGIN_AUDIO] + placeholders, the question, [/INST]: no system message
                assert ids[:3] == [token("<s>"), token("[INST]"), token("[BEGIN_AUDIO]")] and first == 3
                assert ids[first + n:] == [*tokenizer.encode(model.question, add_special_tokens=False),
                                           token("[/INST]")]
            checked += 1
    assert checked == results["data"]["eval_items"]
    batch = dict(np.load(paths[0]))
    logp = np.asarray(esn_jax.score_labels(model.module, model.params, adapters.model_inputs(batch),
                                           model.label_token_ids))
    pred = np.load(work / "predictions.npz")
    row_of = {i: r for r, i in enumerate(pred["ids"].tolist())}
    for row in np.flatnonzero(batch["valid"]):
        np.testing.assert_allclose(logp[row], pred["clean_logp"][0, row_of[str(batch["ids"][row])]], atol=1e-4)


def test_spliced_lalm_system_prompts(env, lalms):
    """Qwen2-Audio writes a given system prompt in place of its default; Voxtral's layout with audio has none
    (mistral-common refuses one), so asking for one is an error, not a silently different prompt."""
    data_dir = str(env[1])
    dataset = adapters.ensure_dataset("synthetic_prosody", "tiny", data_dir, "")
    cfg = get_config(lalm_args(lalms, "qwen2_audio", data_dir, system="Be brief."))
    model = adapters.load_model(cfg)
    examples = list(pipeline.read(dataset, "test", data_dir, "four"))[:2]
    batch = next(adapters.batches(model, examples, cfg))
    text = model.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAudio 1: ")
    with pytest.raises(ValueError, match="Voxtral's prompt layout with audio has no system message"):
        adapters.load_model(get_config(lalm_args(lalms, "voxtral", data_dir, system="Be brief.")))


def test_voxtral_tokens_per_window_must_match_the_features(env, lalms):
    """The features count 375 placeholders per window (mistral-common's rate); an adapter stacking fewer frames
    per token (here 2: 750 tokens per window) would leave audio tokens without a place: refused by name."""
    import dataclasses

    data_dir = str(env[1])
    dataset = adapters.ensure_dataset("synthetic_prosody", "tiny", data_dir, "")
    cfg = get_config(lalm_args(lalms, "voxtral", data_dir))
    model = adapters.load_model(cfg)
    audio = dataclasses.replace(model.module.config.audio, encoder_ffn_dim=2 * model.module.config.audio.d_model)
    other = model.module.clone(config=dataclasses.replace(model.module.config, audio=audio))
    assert other.config.tokens_per_window == 750
    examples = list(pipeline.read(dataset, "test", data_dir, "four"))[:2]
    with pytest.raises(ValueError, match="audio tokens for .* 30-s windows but this Voxtral's adapter makes 750"):
        next(adapters.batches(dataclasses.replace(model, module=other), examples, cfg))


def test_the_corpus_config_defaults_to_the_checkpoints_own(env):
    """An empty dataset_config reads the builder config the checkpoint was trained on (reference.json's dataset,
    Model.corpus) when it names the same dataset: the mini-LALM is evaluated on the voices it never heard."""
    data_dir = str(env[1])
    assert adapters.ensure_dataset("synthetic_prosody", "", data_dir, "", "synthetic_prosody/tiny") == \
        "synthetic_prosody/tiny"
    assert adapters.ensure_dataset("synthetic_prosody", "tiny", data_dir, "", "synthetic_prosody/large") == \
        "synthetic_prosody/tiny"  # an explicit config wins
    with pytest.raises(ValueError, match="dataset='iemocap/tiny'"):
        adapters.ensure_dataset("iemocap/tiny", "", data_dir, "", "synthetic_prosody/tiny")
    model = adapters.load_model(get_config(f"data_dir={data_dir}"))  # the shipped mini-LALM
    assert model.corpus == "synthetic_prosody/large"
