"""The study's stages, each resumable: outputs are written atomically under ``workdir/runs/<config hash>/``
and a restart with the same config skips what exists (per batch inside the long stages).

Stages (``tag`` is ``A`` for the main dataset, ``B`` for the transfer dataset):

  batches/<tag>_<split>/NNNNN.npz  model inputs of each batch (prompts + features), labels, valid, ids
  clean/<tag>/NNNNN.npz            clean label log-probs [B, E]
  stats/<tag>.npz                  success-filtered identification statistics + gradient attribution,
                                   saved after every batch together with the next batch to read
  masks.npz                        bool [S, K, 1 + R, E, L, I]: selector s at k, ESNs (0) and random controls
  deactivate/<tag>/NNNNN.npz       predictions [S, K, 1 + R, E, B] under ablation of every mask
  steer/NNNNN.npz                  predictions [S, 2, A, E, B] under gain α (ESN masks and random seed 0)
  agnostic/NNNNN.npz               predictions [S, 4, A, B]: targeted, Union, Mix, 2-Pass
  transfer_masks.npz, transfer/NNNNN.npz   selection on B; B's predictions under A's and B's masks
  collateral.npz                   plain-text next-token loss [P] clean and [S, K, 1 + R, E, P] with each
                                   mask ablated, with the prompts' tokens and their share of unknown tokens

Shapes: S selectors, K ks, R random seeds, E emotions (label words), A alphas, L layers, I neurons, B batch,
P plain-text prompts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

import esn_jax
from configs.study import parse_list
from esn_jax import collateral
from esn_jax.selectors import attribution
from experiments.study import adapters
from ports import sharding

STRATEGIES = ("targeted", "union", "mix", "two_pass")
CRASH_ENV = "ESN_STUDY_CRASH_AFTER"  # "<stage>:<n>": exit abruptly after saving unit n (resume tests)


class Store:
    """Atomic npz/json files under one run directory, named by a hash of the config."""

    def __init__(self, workdir: Path, cfg):
        text = json.dumps(cfg.to_dict(), sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.root = Path(workdir) / "runs" / self.key
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.root / "config.json", (text + "\n").encode())

    def path(self, name: str) -> Path:
        return self.root / f"{name}.npz"

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def save(self, name: str, **arrays) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomically(self.path(name), buf.getvalue())

    def load(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path(name), allow_pickle=False) as f:
            return dict(f)

    def listing(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        return sorted(f"{prefix}/{p.stem}" for p in folder.glob("*.npz")) if folder.exists() else []


def write_atomically(path: Path, data: bytes) -> None:
    """temp file + rename: a killed run leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def crash_point(stage: str, unit: int) -> None:
    if os.environ.get(CRASH_ENV) == f"{stage}:{unit}":
        os._exit(75)  # like a kill: no cleanup, no flush of anything not yet renamed into place


class Context:
    """What every stage needs: config, store, model, mesh."""

    def __init__(self, cfg, store: Store, model: adapters.Model, mesh=None):
        self.cfg, self.store, self.model, self.mesh = cfg, store, model, mesh
        self.selectors = parse_list("selectors", cfg.selectors)
        self.ks = parse_list("ks", cfg.ks)
        self.alphas = parse_list("alphas", cfg.alphas)
        self.seeds = parse_list("random_seeds", cfg.random_seeds)
        self.num_emotions = len(model.labels)

    def inputs(self, batch: dict) -> dict:
        """The port's kwargs of a batch, sharded over the mesh's data axis when there is a mesh."""
        kw = adapters.model_inputs(batch)
        return sharding.shard_batch(kw, self.mesh) if self.mesh is not None else kw

    def score(self, batch: dict, interventions) -> np.ndarray:
        """Argmax predictions [V, B] under V stacked interventions, ``variant_chunk`` variants per call
        (the last chunk padded with copies) so that one compiled shape serves every stage."""
        v = jax.tree.leaves(interventions)[0].shape[0]
        chunk = min(self.cfg.variant_chunk, v)
        inputs = self.inputs(batch)
        out = []
        for start in range(0, v, chunk):
            part = jax.tree.map(lambda x, s=start: x[s:s + chunk], interventions)
            n = jax.tree.leaves(part)[0].shape[0]
            if n < chunk:
                part = jax.tree.map(lambda x, n=n: np.concatenate([x, np.repeat(x[-1:], chunk - n, 0)]), part)
            logp = esn_jax.score_variants(self.model.module, self.model.params, inputs, part,
                                          self.model.label_token_ids)
            out.append(np.asarray(logp.argmax(-1))[:n])
        return np.concatenate(out)


# ---------------------------------------------------------------- data


def stage_batches(ctx: Context, tag: str, dataset: str, split: str, max_items: int) -> list[str]:
    """Writes the split's model batches once; returns their store names in order."""
    name = f"batches/{tag}_{split}"
    done = ctx.store.path(name + "/done").exists()
    if not done:  # a resumed run recomputes the features of the batches it already saved, and skips the writes
        items = adapters.read_items(ctx.cfg, ctx.model, dataset, split, max_items, ctx.cfg.seed)
        for i, batch in enumerate(tqdm(adapters.batches(ctx.model, items, ctx.cfg), desc=f"features {tag}/{split}",
                                       total=-(-len(items) // ctx.cfg.batch_size))):
            if not ctx.store.has(f"{name}/{i:05d}"):
                ctx.store.save(f"{name}/{i:05d}", **batch)
        ctx.store.save(name + "/done", count=np.int64(i + 1))
    count = int(ctx.store.load(name + "/done")["count"])
    return [f"{name}/{i:05d}" for i in range(count)]


def per_batch(ctx: Context, stage: str, names: list[str], fn, desc: str) -> dict[str, np.ndarray]:
    """Runs ``fn(i, batch) -> {key: array [..., B]}`` on every batch not done yet, saving each; returns the
    arrays of all batches concatenated along their last axis, real (valid) rows only."""
    parts = []
    for i, name in enumerate(tqdm(names, desc=desc)):
        out = f"{stage}/{i:05d}"
        batch = ctx.store.load(name)
        if not ctx.store.has(out):
            ctx.store.save(out, **fn(i, batch))
            crash_point(stage, i)
        parts.append({k: v[..., batch["valid"]] for k, v in ctx.store.load(out).items()})
    return {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}


def items_of(ctx: Context, names: list[str]) -> dict[str, np.ndarray]:
    """labels [N] and ids [N] of the real rows of the batches."""
    batches = [ctx.store.load(n) for n in names]
    return {"labels": np.concatenate([b["labels"][b["valid"]] for b in batches]),
            "ids": np.concatenate([b["ids"][b["valid"]] for b in batches])}


# ---------------------------------------------------------------- clean evaluation and statistics

_score_labels = jax.jit(esn_jax.score_labels, static_argnums=(0, 3))  # module and label ids are hashable


def stage_clean(ctx: Context, tag: str, names: list[str]) -> np.ndarray:
    """Clean label log-probs [N, E] of the real rows."""
    def fn(_, batch):
        logp = _score_labels(ctx.model.module, ctx.model.params, ctx.inputs(batch), ctx.model.label_token_ids)
        return {"logp": np.asarray(logp).T}  # [E, B]: the item axis last, as per_batch concatenates
    return per_batch(ctx, f"clean/{tag}", names, fn, f"clean {tag}")["logp"].T


def stage_stats(ctx: Context, tag: str, names: list[str]) -> tuple[esn_jax.EmotionStats, np.ndarray]:
    """Streams the statistics (success-filtered per the config) and the gradient attribution over the
    identification batches; the running sums are saved after every batch. Returns (stats, grad scores [E, L, I])."""
    config = esn_jax.StatsConfig(site=ctx.cfg.site, positions=ctx.cfg.positions,
                                 success_filter=ctx.cfg.success_filter)
    layers, neurons = esn_jax.model_dims(ctx.model.params)
    e = ctx.num_emotions
    name = f"stats/{tag}"
    if ctx.store.has(name):
        saved = ctx.store.load(name)
        start = int(saved.pop("next_batch"))
        grad_sum, grad_items = saved.pop("grad_sum"), saved.pop("grad_items")
        stats = esn_jax.EmotionStats.zeros(e, layers, neurons, config).replace(**saved)
    else:
        start, stats = 0, esn_jax.EmotionStats.zeros(e, layers, neurons, config)
        grad_sum, grad_items = np.zeros((e, layers, neurons), np.float32), np.zeros(e, np.int32)
    use_grad = "grad" in ctx.selectors
    for i in tqdm(range(start, len(names)), desc=f"statistics {tag}", initial=start, total=len(names)):
        batch = ctx.store.load(names[i])
        kw = ctx.inputs(batch)
        stats, correct = esn_jax.update_stats(stats, ctx.model.module, ctx.model.params, kw, batch["labels"],
                                              ctx.model.label_token_ids, config, item_mask=batch["valid"])
        if use_grad:  # attribution over the same items the statistics keep
            keep = batch["valid"] & (np.asarray(correct) if ctx.cfg.success_filter else True)
            g, n = attribution(ctx.model.module, ctx.model.params, kw, batch["labels"], ctx.model.label_token_ids,
                               e, ctx.cfg.site, item_mask=keep)
            grad_sum, grad_items = grad_sum + np.asarray(g), grad_items + np.asarray(n)
        fields = {f: np.asarray(getattr(stats, f)) for f in ("count_pos", "sum", "sum_sq", "tokens", "items",
                                                             "items_seen")}
        ctx.store.save(name, **fields, grad_sum=grad_sum, grad_items=grad_items, next_batch=np.int64(i + 1))
        crash_point(f"stats/{tag}", i)
    return stats, grad_sum / np.maximum(grad_items, 1)[:, None, None]


def select_all(ctx: Context, stats, grad, ks) -> np.ndarray:
    """bool [S, len(ks), 1 + R, E, L, I]: every selector at every k, then a matched random control per seed."""
    out = []
    for s, method in enumerate(ctx.selectors):
        per_k = []
        for k in ks:
            esn = esn_jax.select(stats, method, k, scores=grad if method == "grad" else None)
            controls = [esn_jax.select(stats, "random", like=esn, seed=seed + 1000 * s) for seed in ctx.seeds]
            per_k.append(np.stack([esn, *controls]))
        out.append(np.stack(per_k))
    return np.stack(out)


def stage_select(ctx: Context, name: str, stats, grad, ks) -> np.ndarray:
    if not ctx.store.has(name):
        ctx.store.save(name, masks=select_all(ctx, stats, grad, ks))
    return ctx.store.load(name)["masks"]


# ---------------------------------------------------------------- interventions


def stage_deactivate(ctx: Context, stage: str, names: list[str], masks: np.ndarray) -> np.ndarray:
    """Predictions [*masks.shape[:-2], N] with each mask ablated."""
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, *masks.shape[-2:])

    def fn(_, batch):
        return {"preds": ctx.score(batch, esn_jax.ablate(flat, ctx.cfg.site)).reshape(*lead, -1)}
    return per_batch(ctx, stage, names, fn, stage)["preds"]


def stage_steer(ctx: Context, names: list[str], masks: np.ndarray) -> np.ndarray:
    """Predictions [S, 2, A, E, N] under gain α on the ESN masks (0) and on random seed 0's (1), at main k."""
    chosen = masks[:, ctx.cfg.main_k, :2]  # [S, 2, E, L, I]
    s, e = chosen.shape[0], chosen.shape[2]
    site = ctx.cfg.site
    # (selector, ESN/random, α, emotion) order; the edits do not depend on the batch, so they are built once.
    edits = esn_jax.stack([esn_jax.gain(chosen[i, j, em], a, site) for i in range(s) for j in range(2)
                           for a in ctx.alphas for em in range(e)])

    def fn(_, batch):
        return {"preds": ctx.score(batch, edits).reshape(s, 2, len(ctx.alphas), e, -1)}
    return per_batch(ctx, "steer", names, fn, "steering")["preds"]


def stage_agnostic(ctx: Context, names: list[str], masks: np.ndarray, clean_logp: np.ndarray) -> np.ndarray:
    """Predictions [S, 4, A, N] under targeted (the true label's mask), Union, Mix (equal weights) and 2-Pass
    (the clean prediction's mask) injection, at main k."""
    chosen = masks[:, ctx.cfg.main_k, 0]  # [S, E, L, I]
    e = chosen.shape[1]
    clean = clean_logp.argmax(-1)
    offsets = np.cumsum([0] + [int(ctx.store.load(n)["valid"].sum()) for n in names])

    site = ctx.cfg.site
    # Union and Mix do not depend on the items: built once, as [L, 1, 1, I] to stack with 2-Pass's [L, B, 1, I].
    shared = [(_per_position(esn_jax.union(m, a, site)), _per_position(esn_jax.mix(m, np.full(e, 1.0 / e), a, site)))
              for m in chosen for a in ctx.alphas]

    def fn(i, batch):
        b = batch["labels"].shape[0]
        # Padding rows (valid False) borrow real rows' clean predictions; they are dropped anyway.
        pred = np.resize(clean[offsets[i]:offsets[i + 1]], b)
        edits = []
        for v, (m, a) in enumerate((m, a) for m in chosen for a in ctx.alphas):
            edits += [esn_jax.two_pass(m, batch["labels"], a, site), *shared[v], esn_jax.two_pass(m, pred, a, site)]
        preds = ctx.score(batch, esn_jax.stack(edits)).reshape(len(chosen), len(ctx.alphas), 4, -1)
        return {"preds": preds.transpose(0, 2, 1, 3)}
    return per_batch(ctx, "agnostic", names, fn, "agnostic")["preds"]


def _per_position(edits):
    """[L, I] edits -> [L, 1, 1, I], so that they stack with 2-Pass's per-item [L, B, 1, I] edits."""
    return jax.tree.map(lambda x: x[:, None, None, :], edits)


# ---------------------------------------------------------------- beyond the paper: collateral damage


def stage_collateral(ctx: Context, masks: np.ndarray) -> dict[str, np.ndarray]:
    """The frozen LM's next-token loss on :data:`esn_jax.collateral.PLAIN_TEXT` (no audio): ``clean`` [P] and
    ``masked`` [S, K, 1 + R, E, P] with each mask ablated (nats/token per prompt), ``input_ids`` and
    ``attention_mask`` [P, T] (right-padded) and ``unknown_share`` (of the real tokens, the tokenizer's unknown
    token's share: a tokenizer without the words makes the loss meaningless)."""
    name = "collateral"
    if not ctx.store.has(name):
        tokenizer = ctx.model.tokenizer
        # Plain text, as the question is what the language model loses on ordinary text: no chat template and
        # no special tokens, so every scored token is the text's own.
        tok = tokenizer(list(collateral.PLAIN_TEXT), padding=True, padding_side="right", truncation=True,
                        max_length=collateral.MAX_TOKENS, add_special_tokens=False, return_tensors="np")
        ids, mask = tok["input_ids"].astype(np.int32), tok["attention_mask"].astype(np.int32)
        unk = tokenizer.unk_token_id  # None for byte-level tokenizers: they have a token for any text
        unknown = 0 if unk is None else int(((ids == unk) & (mask == 1)).sum())
        flat = masks.reshape(-1, *masks.shape[-2:])
        # Variant 0 is the unedited model (an empty mask): clean and masked losses come from one compiled call.
        edits = esn_jax.ablate(np.concatenate([np.zeros_like(flat[:1]), flat]), ctx.cfg.site)
        inputs = ctx.inputs({"input_ids": ids, "attention_mask": mask})
        loss = np.asarray(collateral.text_loss(ctx.model.module, ctx.model.params, inputs["input_ids"],
                                               inputs["attention_mask"], edits, ctx.cfg.variant_chunk))
        ctx.store.save(name, clean=loss[0], masked=loss[1:].reshape(*masks.shape[:-2], -1), input_ids=ids,
                       attention_mask=mask, unknown_share=np.float64(unknown / mask.sum()))
        crash_point(name, 0)
    return ctx.store.load(name)
