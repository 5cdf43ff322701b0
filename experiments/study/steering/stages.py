"""The free-form steering evaluation's stages (resumable like :mod:`experiments.study.stages`, in the same run
directory): the model's own greedy answers under every gain on the ESNs and on their random controls and under
DiffMean, the prompting baseline's answers, each answer's frame loss, and what each intervention costs on plain text.

  free/p<p>/NNNNN.npz          greedy answers, ids [V, B, M] and lengths [V, B], under the V variants of
                               :class:`Layout` on the free-form items
  prompting/t<t>/p<p>/NNNNN.npz  the unedited model's answers, ids [1, B, M] and lengths [1, B], when the question
                               names emotion t as the expected answer (:data:`PROMPTING`)
  free_damage.npz              plain-text damage [V] of every variant: Δ next-token loss on
                               :data:`esn_jax.collateral.PLAIN_TEXT` (variant 0, the unedited model: 0)
  agnostic_damage.npz          the same of the agnostic stage's Union and Mix (1 + S · 2 · A variants)
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
from experiments import hosts
from experiments.study import answers, sizes
from experiments.study import stages as study
from experiments.study.steering import score

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


def stage_answers(ctx: study.Context, stage: str, names: list[str], interventions) -> dict[str, np.ndarray]:
    """Greedy answers (``answer_tokens`` tokens at most) of the real rows of every batch under V interventions:
    ``ids`` [V, N, M], ``lengths`` [V, N], ``items`` [N] (ids)."""
    parts = []
    for i, name in enumerate(tqdm(names, desc=stage)):
        out = f"{stage}/{i:05d}"
        batch = ctx.cache.load(name)
        if not ctx.store.has(out):
            embedded = scoring.embed_jitted(ctx.model.module, ctx.model.params, ctx.inputs(batch))
            ids, lengths = ctx.generate(embedded, interventions, ctx.cfg.answer_tokens)
            ctx.store.save(out, ids=ids, lengths=lengths)
            study.crash_point(stage, i)
        got = ctx.store.load(out)
        parts.append((got["ids"][:, batch["valid"]], got["lengths"][:, batch["valid"]], batch["ids"][batch["valid"]]))
    return {"ids": np.concatenate([p[0] for p in parts], 1), "lengths": np.concatenate([p[1] for p in parts], 1),
            "items": np.concatenate([p[2] for p in parts])}


def stage_damage(ctx: study.Context, name: str, interventions, text: dict) -> np.ndarray:
    """Plain-text damage [V] of each of V stacked interventions whose first is the unedited model: the mean over the
    plain-text prompts of its next-token loss minus the unedited model's (so variant 0 has 0); kept as ``name``.
    text: :func:`experiments.study.stages.stage_collateral`'s output (the prompts' tokens)."""
    if not ctx.store.has(name):
        ids, mask = text["input_ids"], text["attention_mask"]
        inputs = ctx.place({"input_ids": ids, "attention_mask": mask})
        v = esn_jax.sweep.num_variants(interventions)

        def call(part):
            return hosts.to_host(collateral.text_loss(ctx.model.module, ctx.model.params, inputs["input_ids"],
                                                      inputs["attention_mask"], part))
        loss = ctx.sizer.run(sizes.Shape("collateral", *ids.shape, v), interventions, call).mean(-1)  # [V]
        ctx.store.save(name, damage=loss - loss[0])
    return ctx.store.load(name)["damage"]


def frame_losses(ctx: study.Context, texts, question: str, name: str) -> dict[str, float]:
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
    after :data:`score.FRAME` (the question as plain text, no audio) and a space: the fluency proxy of the
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
    mean = np.concatenate([hosts.to_host(collateral.text_loss(module, params, ids[i:i + FRAME_ROWS],
                                                              mask[i:i + FRAME_ROWS], unedited))[0]
                           for i in range(0, len(ids), FRAME_ROWS)]).astype(np.float64)
    total = mean * (mask.sum(1) - 1)  # summed over each row's predicted tokens
    frame_total = total[0] if len(frame) > 1 else 0.0
    return (total[1:len(rows) + 1] - frame_total) / (mask.sum(1)[1:len(rows) + 1] - len(frame))


def read(ctx: study.Context, got: dict) -> dict[str, np.ndarray]:
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


def prompting_questions(questions, label: str) -> tuple[str, ...]:
    """The prompting baseline's question under each prompt: it names ``label`` as the expected answer."""
    return tuple(PROMPTING.format(question=q, label=label) for q in questions)


def run_stage(ctx: study.Context, dataset: str, eval_names: list[list[str]], masks, stats, text: dict) -> dict:
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
    names = study.stage_batches(ctx, "F", dataset, cfg.eval_split, count) if cfg.steer_items else eval_names
    got = [stage_answers(ctx, f"free/p{p}", part, interventions) for p, part in enumerate(names)]
    first = unedited(interventions)
    prompted = []
    for t, word in enumerate(ctx.model.labels):
        questions = prompting_questions(ctx.questions, word)
        hint = study.stage_batches(ctx, f"T{t}", dataset, cfg.eval_split, count, questions)
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
    labels = study.items_of(ctx, names[0])["labels"]
    return {**out, "labels": labels, "items": items, "damage": stage_damage(ctx, "free_damage", interventions, text),
            "layout": np.array([layout.selectors, layout.seeds, layout.alphas, layout.factors, e]),
            "diffmean_relative": relative_size(vectors, dmasks, stats), "diffmean_vectors": vectors.astype(np.float32)}


def stage_agnostic_damage(ctx: study.Context, masks, text: dict) -> np.ndarray:
    """Plain-text damage [S, 2, A] of the agnostic stage's Union and Mix injections (main k, every α)."""
    chosen, site = masks[:, ctx.cfg.main_k, 0], ctx.cfg.site
    e = chosen.shape[1]
    rows = [esn_jax.gain(np.zeros_like(chosen[0, 0]), 0.0, site)]
    rows += [edit for m in chosen for edit in (*(esn_jax.union(m, a, site) for a in ctx.alphas),
                                               *(esn_jax.mix(m, np.full(e, 1.0 / e), a, site) for a in ctx.alphas))]
    damage = stage_damage(ctx, "agnostic_damage", esn_jax.stack(rows), text)
    return damage[1:].reshape(len(chosen), 2, len(ctx.alphas))


def unedited(interventions) -> dict:
    """The first of V stacked interventions, kept as a stack of one (the unedited model in :class:`Layout`)."""
    return {site: {k: v[:1] for k, v in edit.items()} for site, edit in interventions.items()}
