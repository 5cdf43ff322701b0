"""The whole study in order (see :mod:`experiments.study.stages` for what each stage writes), under every prompt
variant (``prompts=``):

clean evaluation → success-filtered identification statistics, pooled over the prompts → every selector at every
k with matched random controls (one per seed), and each prompt's own selection → deactivation matrices (and
cross-prompt transfer) → gain sweep over α → agnostic Union / Mix / 2-Pass → beyond the paper, collateral damage:
each mask's cost to the frozen LM's next-token loss on plain text → layer histograms and overlaps → cross-dataset
transfer (when ``transfer_dataset`` is set) → :func:`analyze`: every number and each finding's verdict over its
stability grid (:mod:`experiments.study.verdicts`) from the stored log-probs alone → results.json,
predictions.npz, masks.npz, timings.json, report.md, report.html and the plots, in the workdir.

The study sizes itself to the device it runs on (:mod:`experiments.study.sizes`): ``variant_chunk=auto`` (the
default) and ``batch_size=auto`` choose the largest shapes whose compiled programs fit ``memory_budget``, a chunk that
does not fit is halved as the study goes, and results.json's ``sizing`` block says what was chosen.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np

import esn_jax
from configs.study import parse_list, size
from experiments import hosts
from experiments.study import adapters, analysis, answers, report, stages, steering, verdicts
from experiments.study.evidence import Evidence, near_ties, preds


def _k_name(k: float) -> str:
    return f"{k:g}"


class _Timer:
    """Wall seconds per stage (summed over calls), for the table README keeps; written to timings.json. Entering a
    stage is where a fault can be injected into one process of a group (:func:`experiments.hosts.fault_point`)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        hosts.fault_point(stage)
        start = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        hosts.barrier(f"after {stage}")  # the stage's files are written before any process goes on


def run(cfg, workdir, mesh=None) -> dict:
    """Runs (or resumes) the study into ``workdir``; returns the results (also in results.json)."""
    workdir = Path(workdir)
    timer = _Timer()
    with timer("load"):
        store = stages.Store(workdir, cfg)
        model = adapters.load_model(cfg, mesh)
        ctx = stages.Context(cfg, store, model, mesh)
    with timer("batches"):
        dataset = adapters.ensure_dataset(cfg.dataset, cfg.dataset_config, cfg.data_dir, cfg.manual_dir,
                                          model.corpus)
        if size(cfg.batch_size, "batch_size") is None:  # auto: resolved once, before any batch is written
            splits = [(dataset, cfg.id_split, cfg.max_id_items), (dataset, cfg.eval_split, cfg.max_eval_items)]
            if cfg.transfer_dataset:
                other = adapters.ensure_dataset(cfg.transfer_dataset, cfg.transfer_dataset_config, cfg.data_dir,
                                                cfg.manual_dir, model.corpus)
                splits += [(other, cfg.transfer_id_split, cfg.max_id_items),
                           (other, cfg.transfer_eval_split, cfg.max_eval_items)]
            prompting = [q for word in model.labels for q in steering.stages.prompting_questions(ctx.questions, word)]
            stages.stage_batch_size(ctx, splits, (*ctx.questions, *prompting))
        id_names = stages.stage_batches(ctx, "A", dataset, cfg.id_split, cfg.max_id_items)
        eval_names = stages.stage_batches(ctx, "A", dataset, cfg.eval_split, cfg.max_eval_items)
        items = stages.items_of(ctx, eval_names[0])
    with timer("clean"):
        clean, clean_mass = stages.stage_clean(ctx, "A", eval_names)  # [P, N, E], [P, N]
    with timer("statistics"):
        per_prompt = stages.stage_stats(ctx, "A", id_names)
    with timer("select"):
        pooled_stats, pooled_grad = stages.pooled(per_prompt)
        masks = stages.stage_select(ctx, "masks", pooled_stats, pooled_grad, ctx.ks)  # [S, K, 1 + R, E, L, I]
        prompt_masks = stages.stage_prompt_masks(ctx, per_prompt) if len(ctx.prompts) > 1 else None
    with timer("deactivate"):
        deact = stages.stage_deactivate(ctx, "deactivate/A", eval_names, masks)
    with timer("prompt transfer"):
        moved = (stages.stage_deactivate(ctx, "deactivate/prompts", eval_names, prompt_masks)
                 if prompt_masks is not None else None)
    with timer("steer"):
        steer = stages.stage_steer(ctx, eval_names, masks)
    with timer("agnostic"):
        agn = stages.stage_agnostic(ctx, eval_names, masks)
    with timer("says"):
        says = stages.stage_says(ctx, eval_names[0], masks)
    with timer("collateral"):
        text = stages.stage_collateral(ctx, masks)
    with timer("free-form steering"):
        free = steering.run_stage(ctx, dataset, eval_names, masks, pooled_stats, text)
        agnostic_damage = steering.stage_agnostic_damage(ctx, masks, text)
    transfer = {}
    if cfg.transfer_dataset:
        with timer("transfer"):
            transfer = _transfer(ctx, masks[:, cfg.main_k, 0])
    costs = {"clean_mass": clean_mass, "deactivate": deact["costs"], "steer": steer["esn_costs"],
             "steer_random": steer["random_costs"], "agnostic": agn["costs"], "agnostic_damage": agnostic_damage}
    ev = Evidence(labels=items["labels"], clean=clean, deactivate=deact["logp"], steer=steer["esn_logp"],
                  steer_random=steer["random_logp"], agnostic=agn["logp"], masks=masks, collateral_clean=text["clean"],
                  collateral_masked=text["masked"], unknown_share=float(text["unknown_share"]),
                  prompt_masks=prompt_masks, prompt_transfer=None if moved is None else moved["logp"], costs=costs,
                  free=free, **transfer)
    layers, neurons = esn_jax.model_dims(model.params)
    base = {
        "config": cfg.to_dict(), "config_hash": store.key,
        "model": {"name": model.name, "checkpoint": str(cfg.checkpoint), "labels": list(model.labels),
                  "label_token_ids": [list(t) for t in model.label_token_ids], "layers": layers, "neurons": neurons},
        "prompts": [{"name": n, "question": q} for n, q in zip(ctx.prompts, ctx.questions, strict=True)],
        "data": {"dataset": dataset, "id_split": cfg.id_split, "eval_split": cfg.eval_split,
                 "eval_items": int(len(ev.labels)),
                 "eval_items_per_emotion": np.bincount(ev.labels, minlength=ctx.num_emotions).tolist()},
        "identification": {"items_seen": np.asarray(pooled_stats.items_seen).tolist(),
                           "items_kept": np.asarray(pooled_stats.items).tolist(),
                           "items_kept_per_prompt": [np.asarray(s.items).tolist() for s, _, _ in per_prompt],
                           "tokens": np.asarray(pooled_stats.tokens).tolist(), "success_filter": cfg.success_filter,
                           "site": cfg.site, "positions": cfg.positions, "pooled_over_prompts": len(ctx.prompts)},
    }
    base["answer"] = {"mode": cfg.answer, "max_new_tokens": cfg.answer_tokens if cfg.answer == "generate" else None,
                      "parser": answers.RULE if cfg.answer == "generate" else None}
    base["says"] = _says(model, says, masks, ctx)
    base["sizing"] = ctx.sizer.summary()
    if cfg.transfer_dataset:
        base["transfer"] = {"dataset": adapters.ensure_dataset(cfg.transfer_dataset, cfg.transfer_dataset_config,
                                                               cfg.data_dir, cfg.manual_dir, model.corpus)}
    with timer("analysis"):
        r = analyze(ev, base, cfg)
    arrays = {**ev.arrays(), "ids": items["ids"], "clean_preds": preds(ev.clean[0]),
              "collateral_input_ids": text["input_ids"], "collateral_attention_mask": text["attention_mask"]}
    with timer("report"):
        if hosts.is_writer():  # every process holds the same results; one writes them
            _write_npz(workdir / "predictions.npz", arrays)
            _write_npz(workdir / "masks.npz", {"masks": masks, "selectors": np.array(ctx.selectors),
                                               "ks": np.array(ctx.ks), "prompts": np.array(ctx.prompts),
                                               **({"prompt_masks": prompt_masks} if prompt_masks is not None else {}),
                                               **({"transfer_masks": ev.transfer_masks} if transfer else {})})
            stages.write_atomically(workdir / "results.json", (json.dumps(r, indent=1) + "\n").encode())
            report.write(workdir, r)
    if hosts.is_writer():
        stages.write_atomically(workdir / "timings.json", (json.dumps(timer.seconds, indent=1) + "\n").encode())
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timer.seconds.items()))
    print(report.compute(r["sizing"]))  # the choices are logged at INFO, which the script's verbosity hides
    return r


def analyze(ev: Evidence, base: dict, cfg) -> dict:
    """Every number and verdict of results.json from the evidence; ``base`` holds what describes the run (config,
    model, prompts, data, identification; ``transfer.dataset`` when there is one)."""
    names = parse_list("selectors", cfg.selectors)
    ks, alphas = parse_list("ks", cfg.ks), parse_list("alphas", cfg.alphas)
    e = ev.clean.shape[-1]
    main_k = _k_name(ks[cfg.main_k])
    labels = ev.labels
    clean, deact = preds(ev.clean), preds(ev.deactivate)  # [P, N], [P, S, K, 1 + R, E, N]
    steer, steer_random, union_mix = preds(ev.steer), preds(ev.steer_random), preds(ev.agnostic)
    r = {k: v for k, v in base.items() if k != "transfer"}
    r["main_k"] = main_k
    r["clean"] = analysis.classification(labels, clean[0], e)
    r["selectors"] = {}
    for s, method in enumerate(names):
        r["selectors"][method] = {"k": {
            _k_name(k): {"count_per_emotion": ev.masks[s, j, 0].sum((1, 2)).tolist(),
                         "random_count_per_emotion": ev.masks[s, j, 1:].sum((2, 3)).tolist(),
                         "layer_histogram": esn_jax.metrics.layer_histogram(ev.masks[s, j, 0]).sum(0).tolist(),
                         "deactivation": analysis.deactivation(labels, clean[0], deact[0, s, j], e, cfg)}
            for j, k in enumerate(ks)}}
    per_prompt = [analysis.interventions(labels, clean[p], deact[p, :, cfg.main_k], steer[p], steer_random[p],
                                         union_mix[p], names, alphas, e, cfg) for p in range(len(clean))]
    r["steering"], r["agnostic"] = per_prompt[0]["steering"], per_prompt[0]["agnostic"]
    r["agnostic_alphas"] = list(alphas)
    r["per_prompt"] = [{**prompt, **numbers} for prompt, numbers in zip(base["prompts"], per_prompt, strict=True)]
    main = ev.masks[:, cfg.main_k, 0]  # [S, E, L, I]
    hist = {m: esn_jax.metrics.layer_histogram(main[s]).sum(0).tolist() for s, m in enumerate(names)}
    r["layers"] = {"per_selector": hist, "summary": analysis.layer_summary(np.sum(list(hist.values()), axis=0))}
    r["overlaps"] = analysis.overlaps(main, names)
    r["prompt_transfer"] = (analysis.prompt_transfer(labels, clean, preds(ev.prompt_transfer), ev.prompt_masks, names,
                                                     [p["name"] for p in base["prompts"]], e)
                            if ev.prompt_transfer is not None else None)
    r["transfer"] = None
    if ev.transfer is not None:
        r["transfer"] = analysis.transfer_result(base["transfer"]["dataset"], ev.transfer_labels,
                                                 preds(ev.transfer_clean[0]), preds(ev.transfer[0]), main,
                                                 ev.transfer_masks, names, e)
        r["transfer"]["per_prompt"] = [
            analysis.transfer(ev.transfer_labels, preds(ev.transfer_clean[p]), preds(ev.transfer[p]), main,
                              ev.transfer_masks, names, e) for p in range(len(clean))]
    if ev.costs is not None:
        analysis.costs(r, ev.costs, names, [_k_name(k) for k in ks], cfg.main_k)
    r["steering_free"] = (steering.analyze(ev.free, cfg, names, None if ev.costs is None else ev.costs["steer"],
                                           [p["name"] for p in base["prompts"]], base.get("model", {}).get("labels"))
                          if ev.free is not None else None)
    r["collateral"] = analysis.collateral(r, ev.collateral_clean, ev.collateral_masked, ev.unknown_share)
    r["near_ties"] = near_ties(ev)
    r["findings"] = verdicts.assess(r, ev, cfg)
    counts = {w: sum(f["verdict"] == w for f in r["findings"]) for w in VERDICTS}
    r["summary"] = {"verdicts": counts, "grid": {"random_seeds": int(ev.steer_random.shape[2]),
                                                 "prompts": int(len(clean)), "resamples": int(cfg.resamples)}}
    return r


VERDICTS = ("holds", "fragile", "does not hold", "not tested")


def _says(model, says: dict, masks: np.ndarray, ctx) -> dict:
    """The "What the model says" table for results.json: every chosen clip's answers, as text and parsed."""
    variants = stages.says_variants(model.labels, ctx.alphas[-1])
    texts = answers.decode(model.tokenizer, says["ids"], says["lengths"])
    per_clip = len(variants)
    clips = []
    for c, (item, label) in enumerate(zip(says["items"], says["labels"], strict=True)):
        mine = texts[c * per_clip:(c + 1) * per_clip]
        clips.append({"id": str(item), "label": model.labels[label], "answers": [
            {"variant": v, "text": t, "parsed": _label_or_none(model.labels, answers.parse(t, model.labels))}
            for v, t in zip(variants, mine, strict=True)]})
    return {"selector": ctx.selectors[0], "k": _k_name(ctx.ks[ctx.cfg.main_k]), "alpha": ctx.alphas[-1],
            "max_new_tokens": ctx.cfg.says_tokens, "neurons": masks[0, ctx.cfg.main_k, 0].sum((1, 2)).tolist(),
            "clips": clips}


def _label_or_none(labels, index: int) -> str | None:
    return None if index < 0 else labels[index]


def _transfer(ctx, masks_a: np.ndarray) -> dict[str, np.ndarray]:
    """Selects on the transfer dataset B too, then ablates A's and B's masks on B's eval items under every prompt.

    masks_a [S, E, L, I] -> the Evidence fields: transfer_labels [N], transfer_clean [P, N, E], transfer
    [P, S, 2, E, N, E] (A's masks, B's), transfer_masks [S, E, L, I] (B's)."""
    cfg = ctx.cfg
    dataset = adapters.ensure_dataset(cfg.transfer_dataset, cfg.transfer_dataset_config, cfg.data_dir,
                                      cfg.manual_dir, ctx.model.corpus)
    id_names = stages.stage_batches(ctx, "B", dataset, cfg.transfer_id_split, cfg.max_id_items)
    eval_names = stages.stage_batches(ctx, "B", dataset, cfg.transfer_eval_split, cfg.max_eval_items)
    labels = stages.items_of(ctx, eval_names[0])["labels"]
    clean, _ = stages.stage_clean(ctx, "B", eval_names)
    stats, grad = stages.pooled(stages.stage_stats(ctx, "B", id_names))
    masks_b = stages.stage_select(ctx, "transfer_masks", stats, grad, (ctx.ks[cfg.main_k],))[:, 0, 0]  # [S, E, L, I]
    logp = stages.stage_deactivate(ctx, "deactivate/B", eval_names, np.stack([masks_a, masks_b], 1))["logp"]
    return {"transfer_labels": labels, "transfer_clean": clean, "transfer": logp, "transfer_masks": masks_b}


def _write_npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    stages.write_atomically(path, buf.getvalue())
