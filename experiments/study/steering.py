"""The steering evaluation, judged as control rather than breakage: the model's own greedy answers under every gain
on the ESNs and on their random controls, DiffMean steering vectors and a prompting baseline; what each gain costs
the language model on plain text; α chosen on held-out items; random controls compared at matched cost. The score
of one answer and every rule: :mod:`experiments.study.steering_score`.

Stage outputs (in the run directory, resumable like :mod:`experiments.study.stages`):

  free/p<p>/NNNNN.npz          greedy answers, ids [V, B, M] and lengths [V, B], under the V variants of
                               :class:`Layout` on the free-form items
  prompting/p<p>/NNNNN.npz     the unedited model's answers, ids [E, B, M] and lengths [E, B], when the question
                               names emotion t as the expected answer (:data:`PROMPTING`)
  free_damage.npz              plain-text damage [V] of every variant: Δ next-token loss on
                               :data:`esn_jax.collateral.PLAIN_TEXT` (variant 0, the unedited model: 0)
  free_frame_p<p>.npz          each distinct answer text's frame loss under prompt p (:func:`frame_losses`)

Shapes: P prompts, S selectors, R random seeds, A α values, F DiffMean factors, E emotions, N free-form items,
V variants, M answer tokens, L layers, I neurons.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm import tqdm

import esn_jax
from configs.study import parse_list
from esn_jax import collateral, scoring
from experiments.study import answers, sizes, stages
from experiments.study import steering_score as score

PROMPTING = "{question} The expected answer is {label}."
DIFFMEAN_ROWS = ("diffmean_neurons", "diffmean_layers")  # on the ESN neurons; on every neuron of their layers
FRAME_ROWS = 32  # answers per compiled frame-loss call


@dataclasses.dataclass(frozen=True)
class Layout:
    """The free-form variants in order: the unedited model; gain α on each selector's ESNs [S, A, E]; gain α on
    each random control [S, R, A, E]; DiffMean at factor c [2, F, E] (:data:`DIFFMEAN_ROWS`)."""

    selectors: int
    seeds: int
    alphas: int
    factors: int
    emotions: int

    @classmethod
    def of(cls, cfg, emotions: int) -> Layout:
        return cls(len(parse_list("selectors", cfg.selectors)), len(parse_list("random_seeds", cfg.random_seeds)),
                   len(parse_list("alphas", cfg.alphas)), len(parse_list("diffmean_factors", cfg.diffmean_factors)),
                   emotions)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        s, r, a, f, e = self.selectors, self.seeds, self.alphas, self.factors, self.emotions
        return {"clean": (), "esn": (s, a, e), "random": (s, r, a, e), "diffmean": (len(DIFFMEAN_ROWS), f, e)}

    @property
    def variants(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes.values())

    def split(self, x) -> dict[str, np.ndarray]:
        """x [V, ...] -> each part [*its shape, ...] (``clean`` [...])."""
        x, out, start = np.asarray(x), {}, 0
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            out[name] = x[start:start + n].reshape((*shape, *x.shape[1:]))
            start += n
        return out


def diffmean(stats) -> np.ndarray:
    """DiffMean vectors [E, L, I]: per emotion, the mean activation over its identification tokens minus the mean
    over every other emotion's tokens (the statistics' sums; success-filtered as the statistics are)."""
    total, tokens = np.asarray(stats.sum, np.float64), np.asarray(stats.tokens, np.float64)
    own = total / np.maximum(tokens, 1)[:, None, None]
    rest = (total.sum(0) - total) / np.maximum(tokens.sum() - tokens, 1)[:, None, None]
    return own - rest


def diffmean_masks(esn) -> np.ndarray:
    """Where DiffMean is added [2, E, L, I], from the ESN masks [S, E, L, I] at main k: the neurons any selector
    chose for the emotion, and every neuron of the layers that hold one of them."""
    neurons = np.asarray(esn, bool).any(0)
    return np.stack([neurons, np.broadcast_to(neurons.any(-1, keepdims=True), neurons.shape)])


def relative_size(vectors, masks, stats) -> np.ndarray:
    """[2, E]: DiffMean's mean |vector| over the masked neurons over their mean root-mean-square activation (all
    identification tokens), so that a factor c adds about c × this of a neuron's typical activation (a gain α adds
    α × the neuron's own activation)."""
    rms = np.sqrt(np.asarray(stats.sum_sq, np.float64).sum(0) / max(float(np.asarray(stats.tokens).sum()), 1.0))
    out = np.full(masks.shape[:2], np.nan)
    for row in range(masks.shape[0]):
        for e in range(masks.shape[1]):
            m = masks[row, e]
            if m.any():
                out[row, e] = np.abs(vectors[e][m]).mean() / max(rms[m].mean(), 1e-12)
    return out


def edits(cfg, masks, vectors, diff_masks) -> dict:
    """The V stacked interventions of :class:`Layout` (each with scale and shift): masks [S, K, 1 + R, E, L, I],
    vectors [E, L, I], diff_masks [2, E, L, I]."""
    site, main = cfg.site, cfg.main_k
    alphas, factors = parse_list("alphas", cfg.alphas), parse_list("diffmean_factors", cfg.diffmean_factors)
    esn, controls = masks[:, main, 0], masks[:, main, 1:]

    def both(edit):
        e = edit[site]
        return {site: {"scale": e["scale"], "shift": e.get("shift", np.zeros(np.shape(e["scale"]), np.float32))}}
    rows = [esn_jax.gain(np.zeros_like(esn[0, 0]), 0.0, site)]
    rows += [esn_jax.gain(esn[s, e], a, site) for s in range(len(esn)) for a in alphas for e in range(esn.shape[1])]
    rows += [esn_jax.gain(controls[s, j, e], a, site) for s in range(len(esn)) for j in range(controls.shape[1])
             for a in alphas for e in range(esn.shape[1])]
    rows += [esn_jax.add_vector(diff_masks[row, e], vectors[e], c, site) for row in range(len(diff_masks))
             for c in factors for e in range(esn.shape[1])]
    return esn_jax.stack([both(r) for r in rows])


# ---------------------------------------------------------------- stages


def stage_answers(ctx: stages.Context, stage: str, names: list[str], interventions) -> dict[str, np.ndarray]:
    """Greedy answers (``answer_tokens`` tokens at most) of the real rows of every batch under V interventions:
    ``ids`` [V, N, M], ``lengths`` [V, N], ``items`` [N] (ids)."""
    parts = []
    for i, name in enumerate(tqdm(names, desc=stage)):
        out = f"{stage}/{i:05d}"
        batch = ctx.store.load(name)
        if not ctx.store.has(out):
            embedded = scoring.embed_jitted(ctx.model.module, ctx.model.params, ctx.inputs(batch))
            ids, lengths = ctx.generate(embedded, interventions, ctx.cfg.answer_tokens)
            ctx.store.save(out, ids=ids, lengths=lengths)
            stages.crash_point(stage, i)
        got = ctx.store.load(out)
        parts.append((got["ids"][:, batch["valid"]], got["lengths"][:, batch["valid"]], batch["ids"][batch["valid"]]))
    return {"ids": np.concatenate([p[0] for p in parts], 1), "lengths": np.concatenate([p[1] for p in parts], 1),
            "items": np.concatenate([p[2] for p in parts])}


def stage_damage(ctx: stages.Context, interventions, text: dict) -> np.ndarray:
    """Plain-text damage [V] of each variant: the mean over the plain-text prompts of its next-token loss minus the
    unedited model's (variant 0). text: :func:`experiments.study.stages.stage_collateral`'s output."""
    name = "free_damage"
    if not ctx.store.has(name):
        ids, mask = text["input_ids"], text["attention_mask"]
        inputs = ctx.inputs({"input_ids": ids, "attention_mask": mask})
        v = esn_jax.sweep.num_variants(interventions)

        def call(part):
            return np.asarray(collateral.text_loss(ctx.model.module, ctx.model.params, inputs["input_ids"],
                                                   inputs["attention_mask"], part))
        loss = ctx.sizer.run(sizes.Shape("collateral", *ids.shape, v), interventions, call).mean(-1)  # [V]
        ctx.store.save(name, damage=loss - loss[0])
    return ctx.store.load(name)["damage"]


def frame_losses(ctx: stages.Context, texts, question: str, name: str) -> dict[str, float]:
    """:func:`frame_loss` of each distinct non-empty answer text to ``question``, kept in the run directory as
    ``name`` -> {text: nats/token}."""
    distinct = sorted({t for t in texts if t})
    if ctx.store.has(name):
        saved = ctx.store.load(name)
        known = dict(zip(saved["texts"].tolist(), saved["loss"].tolist(), strict=True))
        if all(t in known for t in distinct):
            return known
    loss = frame_loss(ctx.model.module, ctx.model.params, ctx.model.tokenizer, distinct, question, ctx.cfg.site,
                      4 * ctx.cfg.answer_tokens)  # an answer of M tokens decodes and re-encodes to about M tokens
    ctx.store.save(name, texts=np.array(distinct, dtype=str), loss=loss)
    return dict(zip(distinct, loss.tolist(), strict=True))


def frame_loss(module, params, tokenizer, texts, question: str, site: str = "gate_act", limit: int = 32) -> np.ndarray:
    """The unedited language model's mean per-token loss [len(texts)] of each text's tokens (at most ``limit``)
    after :data:`steering_score.FRAME` (the question as plain text, no audio) and a space: the fluency proxy of the
    steering score. The frame's own tokens are not counted: the model being causal, the frame's loss is the same in
    every row, and is subtracted."""
    frame = tokenizer(score.FRAME.format(question=question), add_special_tokens=False)["input_ids"]
    rows = [frame + tokenizer(" " + t, add_special_tokens=False)["input_ids"][:limit] for t in texts]
    if any(len(r) == len(frame) for r in rows):
        raise ValueError("every text needs at least one token: empty answers have no frame loss")
    # Row 0 is the frame alone (a one-token frame predicts nothing: its row repeats it, and is not counted).
    ids = np.zeros((len(rows) + 1, len(frame) + limit), np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate([frame if len(frame) > 1 else frame * 2, *rows]):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    layers, neurons = esn_jax.model_dims(params)
    unedited = esn_jax.ablate(np.zeros((1, layers, neurons), bool), site)
    pad = -len(ids) % FRAME_ROWS  # one compiled shape for every call
    ids, mask = np.concatenate([ids, np.repeat(ids[:1], pad, 0)]), np.concatenate([mask, np.repeat(mask[:1], pad, 0)])
    mean = np.concatenate([np.asarray(collateral.text_loss(module, params, ids[i:i + FRAME_ROWS],
                                                           mask[i:i + FRAME_ROWS], unedited))[0]
                           for i in range(0, len(ids), FRAME_ROWS)]).astype(np.float64)
    total = mean * (mask.sum(1) - 1)  # summed over each row's predicted tokens
    frame_total = total[0] if len(frame) > 1 else 0.0
    return (total[1:len(rows) + 1] - frame_total) / (mask.sum(1)[1:len(rows) + 1] - len(frame))


def read(ctx: stages.Context, got: dict) -> dict[str, np.ndarray]:
    """Answers ids [V, N, M], lengths [V, N] -> ``text`` (str), ``parsed`` (label or -1), ``named`` (distinct labels
    named) and ``repetition`` [V, N] (of the answer's tokens, stop tokens left out)."""
    labels, stop = ctx.model.labels, set(ctx.stop_token_ids)
    texts = answers.decode(ctx.model.tokenizer, got["ids"], got["lengths"])
    rows = got["ids"].reshape(-1, got["ids"].shape[-1])
    reps = [score.repetition([t for t in row[:n] if int(t) not in stop])
            for row, n in zip(rows, got["lengths"].reshape(-1), strict=True)]
    shape = got["lengths"].shape
    return {"text": np.array(texts, dtype=str).reshape(shape),
            "parsed": np.array([answers.parse(t, labels) for t in texts], np.int32).reshape(shape),
            "named": np.array([answers.named(t, labels) for t in texts], np.int32).reshape(shape),
            "repetition": np.array(reps, np.float64).reshape(shape)}


def run_stage(ctx: stages.Context, dataset: str, eval_names: list[list[str]], masks, stats, text: dict) -> dict:
    """Every free-form stage; returns the arrays :func:`analyze` reads (``Evidence.free``): ``labels``, ``items``
    [N]; ``layout`` [5] (S, R, A, F, E); per prompt ``text``, ``parsed``, ``named``, ``repetition``, ``loss``
    [P, V, N] (loss: :func:`frame_losses`, NaN for an empty answer); the same of the prompting baseline as
    ``prompting_*`` [P, E, N]; ``damage`` [V]; ``diffmean_relative`` [2, E] (:func:`relative_size`);
    ``diffmean_vectors`` [E, L, I] (:func:`diffmean`)."""
    cfg, e = ctx.cfg, ctx.num_emotions
    layout = Layout.of(cfg, e)
    vectors, dmasks = diffmean(stats), diffmean_masks(masks[:, cfg.main_k, 0])
    interventions = edits(cfg, masks, vectors, dmasks)
    count = cfg.steer_items or cfg.max_eval_items
    names = stages.stage_batches(ctx, "F", dataset, cfg.eval_split, count) if cfg.steer_items else eval_names
    got = [stage_answers(ctx, f"free/p{p}", part, interventions) for p, part in enumerate(names)]
    first = unedited(interventions)
    prompted = []
    for t, word in enumerate(ctx.model.labels):
        questions = tuple(PROMPTING.format(question=q, label=word) for q in ctx.questions)
        hint = stages.stage_batches(ctx, f"T{t}", dataset, cfg.eval_split, count, questions)
        prompted.append([stage_answers(ctx, f"prompting/t{t}/p{p}", part, first) for p, part in enumerate(hint)])
    items = got[0]["items"]
    for t in range(e):
        for p in range(len(names)):
            if not np.array_equal(prompted[t][p]["items"], items):
                raise RuntimeError(f"the prompting batches of {ctx.model.labels[t]!r} under prompt {p} hold other "
                                   "items than the free-form batches")
    out = {k: np.stack([read(ctx, g)[k] for g in got]) for k in ("text", "parsed", "named", "repetition")}
    hinted = [[read(ctx, prompted[t][p]) for t in range(e)] for p in range(len(names))]
    for k in ("text", "parsed", "named", "repetition"):
        out[f"prompting_{k}"] = np.stack([np.concatenate([h[k] for h in per_p]) for per_p in hinted])  # [P, E, N]
    for key in ("", "prompting_"):  # each prompt's answers against its own question
        per_prompt = []
        for p, question in enumerate(ctx.questions):
            losses = frame_losses(ctx, [*out["text"][p].ravel(), *out["prompting_text"][p].ravel()], question,
                                  f"free_frame_p{p}")
            per_prompt.append(np.vectorize(lambda t, known=losses: known[t] if t else np.nan,
                                           otypes=[np.float64])(out[f"{key}text"][p]))
        out[f"{key}loss"] = np.stack(per_prompt)
    labels = stages.items_of(ctx, names[0])["labels"]
    return {**out, "labels": labels, "items": items, "damage": stage_damage(ctx, interventions, text),
            "layout": np.array([layout.selectors, layout.seeds, layout.alphas, layout.factors, e]),
            "diffmean_relative": relative_size(vectors, dmasks, stats), "diffmean_vectors": vectors.astype(np.float32)}


def unedited(interventions) -> dict:
    """The first of V stacked interventions, kept as a stack of one (the unedited model in :class:`Layout`)."""
    return {site: {k: v[:1] for k, v in edit.items()} for site, edit in interventions.items()}


# ---------------------------------------------------------------- analysis (numpy only, from the stored arrays)

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
                         "text_damage": m["damage"], **_means(items, slice(None)),
                         "steering_score": _num(score.mean_score(items["score"])),
                         "gap": _num(np.mean(g)), "gap_ci": boot_ci(g, draws),
                         **score.reliability(items["score"], prep["clean"]["score"][:, rep])})
        del controls[-1]["score"]
    mean_control = np.nanmean([item_gaps(chosen["score"], np.zeros_like(chosen["score"])) - g for g in gaps], 0)
    own = item_gaps(chosen["score"], np.zeros_like(chosen["score"]))
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
           "p_permutation": _num(esn_jax.metrics.paired_permutation_test(own, mean_control, cfg.permutations, cfg.seed))
           if len(own) else None,
           **score.reliability(chosen["score"], prep["clean"]["score"][:, rep])}
    if costs is not None:  # the constrained sweep's costs at the same α (its grid is the α grid without 0)
        out["label_mass"], out["kl"] = (float(np.nanmean(costs[s, a - 1, ..., i])) for i in (1, 0))
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
              "answer_tokens": int(cfg.answer_tokens), "seed": int(cfg.seed), **out[0], "per_prompt": out}
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
