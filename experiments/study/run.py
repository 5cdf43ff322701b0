"""The whole study in order (see :mod:`experiments.study.stages` for what each stage writes):

clean evaluation → success-filtered identification statistics → every selector at every k with matched
random controls → deactivation matrices → gain sweep over α → agnostic Union / Mix / 2-Pass → beyond the
paper, collateral damage: each mask's cost to the frozen LM's next-token loss on plain text → layer
histograms and overlaps → cross-dataset transfer (when ``transfer_dataset`` is set) → results.json,
predictions.npz, masks.npz, report.md, report.html and the plots, in the workdir.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

import esn_jax
from experiments.study import adapters, analysis, report, stages


def _k_name(k: float) -> str:
    return f"{k:g}"


def run(cfg, workdir, mesh=None) -> dict:
    """Runs (or resumes) the study into ``workdir``; returns the results (also in results.json)."""
    workdir = Path(workdir)
    store = stages.Store(workdir, cfg)
    model = adapters.load_model(cfg, mesh)
    ctx = stages.Context(cfg, store, model, mesh)
    e = ctx.num_emotions
    dataset = adapters.ensure_dataset(cfg.dataset, cfg.dataset_config, cfg.data_dir, cfg.manual_dir)

    id_names = stages.stage_batches(ctx, "A", dataset, cfg.id_split, cfg.max_id_items)
    eval_names = stages.stage_batches(ctx, "A", dataset, cfg.eval_split, cfg.max_eval_items)
    items = stages.items_of(ctx, eval_names)
    labels = items["labels"]
    clean_logp = stages.stage_clean(ctx, "A", eval_names)
    clean = clean_logp.argmax(-1)
    stats, grad = stages.stage_stats(ctx, "A", id_names)
    masks = stages.stage_select(ctx, "masks", stats, grad, ctx.ks)  # [S, K, 1 + R, E, L, I]
    deact = stages.stage_deactivate(ctx, "deactivate/A", eval_names, masks)  # [S, K, 1 + R, E, N]
    steer = stages.stage_steer(ctx, eval_names, masks)  # [S, 2, A, E, N]
    agn = stages.stage_agnostic(ctx, eval_names, masks, clean_logp)  # [S, 4, A, N]
    text = stages.stage_collateral(ctx, masks)  # clean [P], masked [S, K, 1 + R, E, P]

    main_k = _k_name(ctx.ks[cfg.main_k])
    layers, neurons = esn_jax.model_dims(model.params)
    r = {
        "config": cfg.to_dict(), "config_hash": store.key,
        "model": {"name": model.name, "checkpoint": str(cfg.checkpoint), "labels": list(model.labels),
                  "label_token_ids": [list(t) for t in model.label_token_ids], "layers": layers, "neurons": neurons},
        "data": {"dataset": dataset, "id_split": cfg.id_split, "eval_split": cfg.eval_split,
                 "eval_items": int(len(labels)), "eval_items_per_emotion": np.bincount(labels, minlength=e).tolist()},
        "identification": {"items_seen": np.asarray(stats.items_seen).tolist(),
                           "items_kept": np.asarray(stats.items).tolist(), "tokens": np.asarray(stats.tokens).tolist(),
                           "success_filter": cfg.success_filter, "site": cfg.site, "positions": cfg.positions},
        "clean": analysis.classification(labels, clean, e),
        "main_k": main_k,
        "selectors": {},
    }
    for s, method in enumerate(ctx.selectors):
        r["selectors"][method] = {"k": {
            _k_name(k): {"count_per_emotion": masks[s, j, 0].sum((1, 2)).tolist(),
                         "random_count_per_emotion": masks[s, j, 1:].sum((2, 3)).tolist(),
                         "layer_histogram": esn_jax.metrics.layer_histogram(masks[s, j, 0]).sum(0).tolist(),
                         "deactivation": analysis.deactivation(labels, clean, deact[s, j], e, cfg)}
            for j, k in enumerate(ctx.ks)}}
    r["steering"] = {m: analysis.steering(labels, clean, steer[s], ctx.alphas, cfg)
                     for s, m in enumerate(ctx.selectors)}
    r["agnostic"] = {m: analysis.agnostic(labels, clean, agn[s], ctx.alphas, e, stages.STRATEGIES)
                     for s, m in enumerate(ctx.selectors)}
    r["agnostic_alphas"] = list(ctx.alphas)
    main = masks[:, cfg.main_k, 0]  # [S, E, L, I]
    hist = {m: esn_jax.metrics.layer_histogram(main[s]).sum(0).tolist() for s, m in enumerate(ctx.selectors)}
    r["layers"] = {"per_selector": hist, "summary": analysis.layer_summary(np.sum(list(hist.values()), axis=0))}
    r["overlaps"] = analysis.overlaps(main, ctx.selectors)
    arrays = {"labels": labels, "ids": items["ids"], "clean_logp": clean_logp, "clean_preds": clean,
              "deactivate": deact, "steer": steer, "agnostic": agn, "collateral_clean": text["clean"],
              "collateral_masked": text["masked"]}
    r["transfer"] = None
    if cfg.transfer_dataset:
        r["transfer"], transfer_arrays = _transfer(ctx, main)
        arrays.update({f"transfer_{k}": v for k, v in transfer_arrays.items()})
    r["collateral"] = analysis.collateral(r, text["clean"], text["masked"], float(text["unknown_share"]))
    r["findings"] = analysis.findings(r, main_k)

    _write_npz(workdir / "predictions.npz", arrays)
    _write_npz(workdir / "masks.npz", {"masks": masks, "selectors": np.array(ctx.selectors), "ks": np.array(ctx.ks)})
    stages.write_atomically(workdir / "results.json", (json.dumps(r, indent=1) + "\n").encode())
    report.write(workdir, r)
    return r


def _transfer(ctx, masks_a: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """Selects on the transfer dataset B too, then ablates A's and B's masks on B's eval items.

    masks_a [S, E, L, I] -> (results, {labels [N], clean_preds [N], preds [S, 2, E, N] (A's masks, B's),
    masks [S, E, L, I] (B's)})."""
    cfg = ctx.cfg
    e = ctx.num_emotions
    dataset = adapters.ensure_dataset(cfg.transfer_dataset, cfg.transfer_dataset_config, cfg.data_dir,
                                      cfg.manual_dir)
    id_names = stages.stage_batches(ctx, "B", dataset, cfg.transfer_id_split, cfg.max_id_items)
    eval_names = stages.stage_batches(ctx, "B", dataset, cfg.transfer_eval_split, cfg.max_eval_items)
    labels = stages.items_of(ctx, eval_names)["labels"]
    clean = stages.stage_clean(ctx, "B", eval_names).argmax(-1)
    stats, grad = stages.stage_stats(ctx, "B", id_names)
    masks_b = stages.stage_select(ctx, "transfer_masks", stats, grad, (ctx.ks[cfg.main_k],))[:, 0, 0]  # [S, E, L, I]
    preds = stages.stage_deactivate(ctx, "deactivate/B", eval_names, np.stack([masks_a, masks_b], 1))
    out = {"dataset": dataset, "eval_items": int(len(labels)), "clean": analysis.classification(labels, clean, e),
           "selectors": {}}
    for s, m in enumerate(ctx.selectors):
        own = analysis.mean_specificity(labels, clean, preds[s, 1].T, e)
        moved = analysis.mean_specificity(labels, clean, preds[s, 0].T, e)
        overlap = analysis.nanmean([esn_jax.metrics.jaccard(masks_a[s, t], masks_b[s, t]) for t in range(e)])
        out["selectors"][m] = {"specificity_transferred": analysis.num(moved), "specificity_own": analysis.num(own),
                               "ratio": analysis.num(moved / own) if own < 0 else None,
                               "jaccard": analysis.num(overlap)}
    out["best"] = min(out["selectors"], key=lambda m: out["selectors"][m]["specificity_own"] or 0.0)
    return out, {"labels": labels, "clean_preds": clean, "preds": preds, "masks": masks_b}


def _write_npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    stages.write_atomically(path, buf.getvalue())
