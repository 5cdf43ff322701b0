"""The study's stages, each resumable: outputs are written atomically under ``workdir/runs/<config hash>/``
and a restart with the same config skips what exists (per batch inside the long stages).

Every model-facing stage runs once per prompt variant ``p`` (``prompts=``; :func:`adapters.questions`) on the
same items, and stores label log-probs, not only predictions, so that near-ties can be counted and the verdicts'
sensitivity to float noise tested. Stages (``tag`` is ``A`` for the main dataset, ``B`` for the transfer dataset):

  sizing.json                           the sizer's choices (experiments/study/sizes.py): the batch size with
                                        batch_size=auto, and every call shape's variant chunk and bytes
  batches/<tag>_<split>_p<p>/NNNNN.npz  model inputs of each batch (prompts + features), labels, valid, ids: in a
                                        multi-host run each process's cache of its own rows (process i > 0's under
                                        host_<i>/); every other file is process 0's (Store)
  clean/<tag>/p<p>/NNNNN.npz            clean label log-probs [B, E]
  stats/<tag>_p<p>.npz                  success-filtered identification statistics + gradient attribution,
                                        saved after every batch together with the next batch to read
  masks.npz                             bool [S, K, 1 + R, E, L, I]: selector s at k, ESNs (0) and random controls,
                                        from the statistics pooled over the prompts
  prompt_masks.npz                      bool [P, S, E, L, I]: each prompt's own selection at main k (P > 1)
  deactivate/<tag>/p<p>/NNNNN.npz       log-probs [S, K, 1 + R, E, B, E] with every mask ablated
  deactivate/prompts/p<p>/NNNNN.npz     log-probs [P, S, E, B, E]: each prompt's own masks ablated under prompt p
  steer/p<p>/NNNNN.npz                  log-probs [S, A, E, B, E] under gain α on the ESNs, and
                                        [S, R, E, B, E] on each random control at the largest α
  agnostic/p<p>/NNNNN.npz               log-probs [S, 2, A, B, E]: Union and Mix (targeted and 2-Pass injection are
                                        the steering sweep's rows of the true and of the predicted emotion)
  transfer_masks.npz                    selection on B
  collateral.npz                        plain-text next-token loss [T] clean and [S, K, 1 + R, E, T] with each
                                        mask ablated, with the texts' tokens and their share of unknown tokens

Shapes: P prompts, S selectors, K ks, R random seeds, E emotions (label words), A alphas, L layers, I neurons,
B batch, T plain-text prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

import esn_jax
from configs.study import parse_list
from esn_jax import collateral, scoring
from esn_jax.selectors import attribution
from experiments import hosts
from experiments.study import adapters, answers, sizes
from ports import prompts, sharding

CRASH_ENV = "ESN_STUDY_CRASH_AFTER"  # "<stage>:<n>": exit abruptly after saving unit n (resume tests)


class HostCache:
    """npz files that one process writes and reads itself: with one process the run's store, in a group each host's
    cache of the model inputs of its own rows."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

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


class Store(HostCache):
    """Atomic npz/json files under one run directory, named by a hash of the config.

    In a multi-host run (:mod:`experiments.hosts`) the store is collective: every process calls it at the same
    points; process 0 alone writes, decides what exists (:meth:`has`) and reads, and what it read reaches the others
    by broadcast, so no process reads a file another wrote and a resumed run takes one decision for all."""

    def __init__(self, workdir: Path, cfg):
        text = json.dumps(cfg.to_dict(), sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:16]
        super().__init__(Path(workdir) / "runs" / self.key)
        if hosts.is_writer():
            write_atomically(self.root / "config.json", (text + "\n").encode())

    def has(self, name: str) -> bool:
        return hosts.broadcast_flag(hosts.is_writer() and super().has(name))

    def save(self, name: str, **arrays) -> None:
        if hosts.is_writer():
            super().save(name, **arrays)

    def load(self, name: str) -> dict[str, np.ndarray]:
        data = hosts.broadcast_bytes(self.path(name).read_bytes() if hosts.is_writer() else None)
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return dict(f)

    def save_json(self, name: str, value) -> None:
        if hosts.is_writer():
            write_atomically(self.root / f"{name}.json",
                             (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())

    def load_json(self, name: str):
        path = self.root / f"{name}.json"
        if not hosts.broadcast_flag(hosts.is_writer() and path.exists()):
            return None
        return json.loads(hosts.broadcast_bytes(path.read_bytes() if hosts.is_writer() else None))

    def cache(self) -> HostCache:
        """This process's cache of model inputs (``batches/``: its rows of every batch): process 0's is in the run
        directory, another's in a folder of its own, ``host_<i>``, since no process reads a file another wrote."""
        return HostCache(self.root if hosts.is_writer() else self.root / f"host_{jax.process_index()}")


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
    """What every stage needs: config, store, model, mesh, the study's axes, and the sizer that chooses and guards
    the variant chunk of every sweep (:mod:`experiments.study.sizes`; its choices are kept in the run directory's
    ``sizing.json``)."""

    def __init__(self, cfg, store: Store, model: adapters.Model, mesh=None):
        self.cfg, self.store, self.model, self.mesh = cfg, store, model, mesh
        self.cache = store.cache()  # the model inputs (batches/): each host's own
        self.sizer = sizes.Sizer(model, cfg.variant_chunk, cfg.memory_budget, cfg.site, mesh,
                                 record=store.load_json("sizing"), save=functools.partial(store.save_json, "sizing"))
        self.selectors = parse_list("selectors", cfg.selectors)
        self.ks = parse_list("ks", cfg.ks)
        self.alphas = parse_list("alphas", cfg.alphas)
        self.seeds = parse_list("random_seeds", cfg.random_seeds)
        self.prompts = parse_list("prompts", cfg.prompts)
        self.questions = adapters.questions(model, self.prompts)
        self.num_emotions = len(model.labels)

    @property
    def rows(self) -> slice:
        """The rows of every batch that this process builds and feeds (all of them with one process)."""
        size = self.cfg.batch_size
        return sharding.process_rows(self.mesh, size) if self.mesh is not None else slice(0, size)

    def inputs(self, batch: dict) -> dict:
        """The port's kwargs of a cached batch (this process's rows of it), sharded over the mesh's data axis when
        there is a mesh."""
        kw = adapters.model_inputs(batch)
        if hosts.multi():
            return sharding.shard_process_rows(kw, self.mesh, self.rows, len(batch["valid"]))
        return self.place(kw)

    def place(self, arrays: dict) -> dict:
        """Arrays [B, ...] that every process holds whole, sharded over the mesh's data axis when there is a mesh."""
        return sharding.shard_batch(arrays, self.mesh) if self.mesh is not None else arrays

    def score(self, batch: dict, interventions) -> dict[str, np.ndarray]:
        """Label log-probs ``logp`` [V, B, E] under V stacked interventions, and what each costs at the answer
        position, ``costs`` [V, B, 2]: KL(clean ‖ intervened) of the next-token distribution and the total
        probability on the E labels, the label mass (:mod:`esn_jax.collateral`). In chunks of the sizer's variants
        per call (the last chunk padded with copies, so that one compiled shape serves every stage); the encoders run
        once.

        With ``answer=generate`` the model answers freely as well, and ``logp`` are those of its parsed answers
        (:func:`experiments.study.answers.as_logp`); the costs still come from scoring the labels."""
        embedded = scoring.embed_jitted(self.model.module, self.model.params, self.inputs(batch))

        def call(part):
            logp, kl = esn_jax.score_variants(self.model.module, self.model.params, embedded, part,
                                              self.model.label_token_ids, drift=True)
            return hosts.to_host(logp).astype(np.float32), hosts.to_host(kl).astype(np.float32)
        logp, kl = self.sizer.run(self._shape("score", embedded, interventions), interventions, call)
        costs = np.stack([kl, collateral.label_mass(logp)], -1).astype(np.float32)
        if self.cfg.answer == "generate":
            ids, lengths = self.generate(embedded, interventions, self.cfg.answer_tokens)
            logp = answers.as_logp([answers.parse(t, self.model.labels)
                                    for t in answers.decode(self.model.tokenizer, ids, lengths)],
                                   self.num_emotions).reshape(*ids.shape[:2], -1)
        return {"logp": logp, "costs": costs}

    def _shape(self, program: str, embedded: dict, interventions, tokens: int = 0) -> sizes.Shape:
        return sizes.Shape(program, *embedded["inputs_embeds"].shape[:2], jax.tree.leaves(interventions)[0].shape[0],
                           tokens)

    @functools.cached_property
    def stop_token_ids(self) -> tuple[int, ...]:
        return prompts.stop_token_ids(self.model.tokenizer)  # read once, and only when the model generates

    def generate(self, embedded: dict, interventions, max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy answers under V stacked interventions, in chunks as :meth:`score` -> ids [V, B, N], lengths
        [V, B]."""
        def call(part):
            ids, lengths = esn_jax.generate(self.model.module, self.model.params, embedded, max_new_tokens, part,
                                            stop_token_ids=self.stop_token_ids,
                                            pad_token_id=self.model.tokenizer.pad_token_id)
            return hosts.to_host(ids), hosts.to_host(lengths)
        return self.sizer.run(self._shape("generate", embedded, interventions, max_new_tokens), interventions, call)


# ---------------------------------------------------------------- data


def stage_batch_size(ctx: Context, splits: list[tuple[str, str, int]], questions: tuple[str, ...]) -> int:
    """Resolves ``batch_size=auto`` once, before any batch is written (:meth:`sizes.Sizer.batch_size` at the prompt
    length of the longest bucket the items of ``splits`` [(dataset, split, max_items)] fall in, under every one of
    ``questions``, capped at the most items of a split and :data:`sizes.BATCH_CAP`), and keeps it in the run
    directory: a resumed run reuses it whatever device it runs on, so that all of a run's batches have one size.
    Sets it in ``ctx.cfg``."""
    chosen = ctx.sizer.record.get("batch_size")
    if chosen is None:
        items = [adapters.read_items(ctx.cfg, ctx.model, *split, ctx.cfg.seed) for split in splits]
        length = sizes.prompt_length(ctx.model, [ex for part in items for ex in part], questions, ctx.cfg)
        cap = min(sizes.BATCH_CAP, max(map(len, items)))
        size = ctx.sizer.batch_size(length, cap, max(ctx.cfg.answer_tokens, ctx.cfg.says_tokens))
        shape = sizes.Shape("score", size, length, 1)
        chosen = {"requested": "auto", "resolved": size, "length": length, "cap": cap,
                  "bytes": ctx.sizer.bytes(shape, 1)}
        ctx.sizer.record["batch_size"] = chosen
        ctx.sizer.save()
        logging.info("batch_size=auto: %d rows (prompts of %d tokens, at most %d): one variant's sweep takes %d bytes "
                     "per device of a budget of %d", size, length, cap, chosen["bytes"], ctx.sizer.budget)
    ctx.cfg = sizes.with_batch_size(ctx.cfg, chosen["resolved"])
    return chosen["resolved"]


def stage_batches(ctx: Context, tag: str, dataset: str, split: str, max_items: int,
                  questions: tuple[str, ...] | None = None) -> list[list[str]]:
    """Writes the split's model batches once per prompt (the same items in the same order under every prompt) into
    this process's cache (its rows of each batch: :attr:`Context.rows`); returns their names [P][batches].
    questions: other questions than the study's prompts', one per P."""
    questions = ctx.questions if questions is None else questions
    names = [f"batches/{tag}_{split}_p{p}" for p in range(len(questions))]
    rows = ctx.rows.start, ctx.rows.stop
    todo = [p for p, name in enumerate(names) if not ctx.cache.has(name + "/done")
            or np.asarray(ctx.cache.load(name + "/done").get("rows", ())).tolist() != [*rows]]
    items = adapters.read_items(ctx.cfg, ctx.model, dataset, split, max_items, ctx.cfg.seed) if todo else []
    for p in todo:  # all of a prompt's batches, whatever an interrupted run (of any group) left
        model = dataclasses.replace(ctx.model, question=questions[p])
        for i, batch in enumerate(tqdm(adapters.batches(model, items, ctx.cfg, slice(*rows)),
                                       desc=f"features {tag}/{split}/p{p}",
                                       total=-(-len(items) // ctx.cfg.batch_size))):
            ctx.cache.save(f"{names[p]}/{i:05d}", **batch)
        ctx.cache.save(names[p] + "/done", count=np.int64(i + 1), rows=np.array(rows, np.int64))
    counts = [int(ctx.cache.load(name + "/done")["count"]) for name in names]
    out = [[f"{name}/{i:05d}" for i in range(count)] for name, count in zip(names, counts, strict=True)]
    if hosts.multi():  # every host must run the same steps on the same items (each batch's ids, labels, valid rows)
        hosts.agree(f"the batches of {tag}/{split}", b"".join(  # npz members are read one by one: not the features
            np.load(ctx.cache.path(n))[k].tobytes() for part in out for n in part for k in ("ids", "labels", "valid")))
    return out


def per_batch(ctx: Context, stage: str, names: list[str], fn, desc: str) -> dict[str, np.ndarray]:
    """Runs ``fn(i, batch) -> {key: array [..., B, E]}`` on every batch not done yet, saving each; returns the
    arrays of all batches concatenated along their item axis (-2), real (valid) rows only."""
    parts = []
    for i, name in enumerate(tqdm(names, desc=desc)):
        out = f"{stage}/{i:05d}"
        batch = ctx.cache.load(name)
        if not ctx.store.has(out):
            ctx.store.save(out, **fn(i, batch))
            crash_point(stage, i)
        parts.append({k: v[..., batch["valid"], :] for k, v in ctx.store.load(out).items()})
    return {k: np.concatenate([p[k] for p in parts], axis=-2) for k in parts[0]}


def per_prompt(ctx: Context, stage: str, names: list[list[str]], fn) -> dict[str, np.ndarray]:
    """:func:`per_batch` under every prompt (stage ``<stage>/p<p>``): arrays [P, ..., N, E]."""
    out = [per_batch(ctx, f"{stage}/p{p}", part, fn, f"{stage} p{p}") for p, part in enumerate(names)]
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def items_of(ctx: Context, names: list[str]) -> dict[str, np.ndarray]:
    """labels [N] and ids [N] of the real rows of the batches."""
    batches = [ctx.cache.load(n) for n in names]
    return {"labels": np.concatenate([b["labels"][b["valid"]] for b in batches]),
            "ids": np.concatenate([b["ids"][b["valid"]] for b in batches])}


# ---------------------------------------------------------------- clean evaluation and statistics

_score_labels = jax.jit(esn_jax.score_labels, static_argnums=(0, 3))  # module and label ids are hashable


def stage_clean(ctx: Context, tag: str, names: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Clean label log-probs [P, N, E] of the real rows (of the parsed answers with ``answer=generate``) and their
    label mass [P, N]."""
    def fn(_, batch):
        if ctx.cfg.answer == "generate":
            layers, neurons = esn_jax.model_dims(ctx.model.params)
            out = ctx.score(batch, esn_jax.ablate(np.zeros((1, layers, neurons), bool)))
            return {"logp": out["logp"][0], "mass": out["costs"][0, :, 1:]}
        logp = hosts.to_host(_score_labels(ctx.model.module, ctx.model.params, ctx.inputs(batch),
                                           ctx.model.label_token_ids)).astype(np.float32)
        return {"logp": logp, "mass": collateral.label_mass(logp)[:, None].astype(np.float32)}
    out = per_prompt(ctx, f"clean/{tag}", names, fn)
    return out["logp"], out["mass"][..., 0]


def stage_stats(ctx: Context, tag: str, names: list[list[str]]) -> list[tuple[esn_jax.EmotionStats, np.ndarray]]:
    """Per prompt, streams the statistics (success-filtered per the config: the items that prompt gets right) and
    the gradient attribution over the identification batches; the running sums are saved after every batch.
    Returns [(stats, grad_sum [E, L, I], grad_items [E])] per prompt (they add up over prompts)."""
    config = esn_jax.StatsConfig(site=ctx.cfg.site, positions=ctx.cfg.positions,
                                 success_filter=ctx.cfg.success_filter)
    layers, neurons = esn_jax.model_dims(ctx.model.params)
    e = ctx.num_emotions
    use_grad = "grad" in ctx.selectors
    out = []
    for p, part in enumerate(names):
        name = f"stats/{tag}_p{p}"
        if ctx.store.has(name):
            saved = ctx.store.load(name)
            start = int(saved.pop("next_batch"))
            grad_sum, grad_items = saved.pop("grad_sum"), saved.pop("grad_items")
            stats = esn_jax.EmotionStats.zeros(e, layers, neurons, config).replace(**saved)
        else:
            start, stats = 0, esn_jax.EmotionStats.zeros(e, layers, neurons, config)
            grad_sum, grad_items = np.zeros((e, layers, neurons), np.float32), np.zeros(e, np.int32)
        for i in tqdm(range(start, len(part)), desc=f"statistics {tag} p{p}", initial=start, total=len(part)):
            batch = ctx.cache.load(part[i])
            kw = ctx.inputs(batch)
            stats, correct = esn_jax.update_stats(stats, ctx.model.module, ctx.model.params, kw, batch["labels"],
                                                  ctx.model.label_token_ids, config, item_mask=batch["valid"])
            if use_grad:  # attribution over the same items the statistics keep
                keep = batch["valid"] & (hosts.to_host(correct) if ctx.cfg.success_filter else True)
                g, n = attribution(ctx.model.module, ctx.model.params, kw, batch["labels"],
                                   ctx.model.label_token_ids, e, ctx.cfg.site, item_mask=keep)
                grad_sum, grad_items = grad_sum + hosts.to_host(g), grad_items + hosts.to_host(n)
            fields = {f: hosts.to_host(getattr(stats, f)) for f in STATS_FIELDS}
            ctx.store.save(name, **fields, grad_sum=grad_sum, grad_items=grad_items, next_batch=np.int64(i + 1))
            crash_point(name, i)
        out.append((stats, grad_sum, grad_items))
    return out


STATS_FIELDS = ("count_pos", "sum", "sum_sq", "tokens", "items", "items_seen")


def pooled(per_prompt_stats: list[tuple]) -> tuple[esn_jax.EmotionStats, np.ndarray]:
    """(statistics summed over prompts, mean gradient attribution [E, L, I] over every kept item)."""
    stats = per_prompt_stats[0][0]
    for other, _, _ in per_prompt_stats[1:]:
        stats = stats + other
    grad_sum = np.sum([g for _, g, _ in per_prompt_stats], axis=0)
    grad_items = np.sum([n for _, _, n in per_prompt_stats], axis=0)
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
        masks = select_all(ctx, stats, grad, ks)
        hosts.agree(name, masks.tobytes())  # drawn from the reduced statistics and the seeds alone, on every host
        ctx.store.save(name, masks=masks)
    return ctx.store.load(name)["masks"]


def stage_prompt_masks(ctx: Context, per_prompt_stats: list[tuple]) -> np.ndarray:
    """bool [P, S, E, L, I]: each prompt's own ESNs at main k (for the cross-prompt transfer). A prompt under which
    fewer than two emotions kept an identification item (the success filter keeps what that prompt gets right) has
    no selection to contrast: its masks are empty, with a warning, and the transfer from it is undefined."""
    if not ctx.store.has("prompt_masks"):
        k = (ctx.ks[ctx.cfg.main_k],)
        layers, neurons = esn_jax.model_dims(ctx.model.params)
        out = []
        for p, one in enumerate(per_prompt_stats):
            if (np.asarray(one[0].items) > 0).sum() < 2:
                warnings.warn(f"prompt {ctx.prompts[p]!r} kept identification items of fewer than two emotions "
                              f"({np.asarray(one[0].items).tolist()}): no selection of its own", stacklevel=2)
                out.append(np.zeros((len(ctx.selectors), ctx.num_emotions, layers, neurons), bool))
            else:
                out.append(select_all(ctx, *pooled([one]), k)[:, 0, 0])
        ctx.store.save("prompt_masks", masks=np.stack(out))
    return ctx.store.load("prompt_masks")["masks"]


# ---------------------------------------------------------------- interventions


def stage_deactivate(ctx: Context, stage: str, names: list[list[str]], masks: np.ndarray) -> dict[str, np.ndarray]:
    """Under every prompt, each mask ablated: ``logp`` [P, *masks.shape[:-2], N, E] and ``costs`` [..., N, 2]
    (:meth:`Context.score`)."""
    lead = masks.shape[:-2]
    edits = esn_jax.ablate(masks.reshape(-1, *masks.shape[-2:]), ctx.cfg.site)

    def fn(_, batch):
        return {k: v.reshape(*lead, *v.shape[1:]) for k, v in ctx.score(batch, edits).items()}
    return per_prompt(ctx, stage, names, fn)


def stage_steer(ctx: Context, names: list[list[str]], masks: np.ndarray) -> dict[str, np.ndarray]:
    """Under gain at main k, under every prompt: ``esn_logp`` [P, S, A, E, N, E] (each α) and ``random_logp``
    [P, S, R, E, N, E] (each random control at the largest α, where the constrained finding compares them), with
    their ``esn_costs`` and ``random_costs`` [..., N, 2] (:meth:`Context.score`)."""
    s, _, r1, e = masks.shape[:4]
    esn, controls = masks[:, ctx.cfg.main_k, 0], masks[:, ctx.cfg.main_k, 1:]  # [S, E, L, I], [S, R, E, L, I]
    site, top = ctx.cfg.site, ctx.alphas[-1]
    # The edits do not depend on the batch, so they are built once: (selector, α, emotion), then
    # (selector, seed, emotion).
    edits = esn_jax.stack([esn_jax.gain(esn[i, em], a, site) for i in range(s) for a in ctx.alphas for em in range(e)]
                          + [esn_jax.gain(controls[i, j, em], top, site) for i in range(s) for j in range(r1 - 1)
                             for em in range(e)])
    split = s * len(ctx.alphas) * e

    def fn(_, batch):
        out = ctx.score(batch, edits)
        return {f"{row}_{k}": part for k, v in out.items() for row, part in (
            ("esn", v[:split].reshape(s, len(ctx.alphas), e, *v.shape[1:])),
            ("random", v[split:].reshape(s, r1 - 1, e, *v.shape[1:])))}
    return per_prompt(ctx, "steer", names, fn)


def stage_agnostic(ctx: Context, names: list[list[str]], masks: np.ndarray) -> dict[str, np.ndarray]:
    """``logp`` [P, S, 2, A, N, E] under Union and Mix (equal weights) injection of the ESNs at main k, and their
    ``costs`` [..., N, 2] (:meth:`Context.score`).

    Targeted (the true label's mask) and 2-Pass (the clean prediction's mask) injection apply one emotion's mask at
    gain α to an item: the steering sweep already scored every item under every emotion's mask at every α, so
    :mod:`experiments.study.analysis` reads them from there instead of running them again."""
    chosen = masks[:, ctx.cfg.main_k, 0]  # [S, E, L, I]
    e, site = chosen.shape[1], ctx.cfg.site
    edits = esn_jax.stack([edit for m in chosen for edit in (
        *(esn_jax.union(m, a, site) for a in ctx.alphas),
        *(esn_jax.mix(m, np.full(e, 1.0 / e), a, site) for a in ctx.alphas))])

    def fn(_, batch):
        return {k: v.reshape(len(chosen), 2, len(ctx.alphas), *v.shape[1:]) for k, v in ctx.score(batch, edits).items()}
    return per_prompt(ctx, "agnostic", names, fn)


def says_variants(labels, alpha: float) -> list[str]:
    """The names of :func:`stage_says`'s interventions, in its order."""
    return ["clean"] + [name for emotion in labels for name in (
        f"{emotion} ESNs ×(1+{alpha:g})", f"{emotion} random ×(1+{alpha:g})", f"{emotion} ESNs ablated")]


def stage_says(ctx: Context, names: list[str], masks: np.ndarray) -> dict[str, np.ndarray]:
    """What the model says, in both answer modes: the first evaluation clip of each emotion (under the first
    prompt) answered freely (greedy, ``says_tokens`` tokens) clean, then for each emotion with its ESNs (the first
    selector, main k) amplified at the largest α, with their matched random control (the first seed) amplified,
    and with the ESNs ablated (:func:`says_variants`). -> ``ids`` [C, V, N], ``lengths`` [C, V], ``labels`` [C],
    ``items`` [C] (item ids)."""
    if not ctx.store.has("says"):
        esn, control = masks[0, ctx.cfg.main_k, 0], masks[0, ctx.cfg.main_k, 1]  # [E, L, I]
        top, site = ctx.alphas[-1], ctx.cfg.site
        per_emotion = [(esn_jax.gain(m, top, site), esn_jax.gain(c, top, site), esn_jax.ablate(m, site))
                       for m, c in zip(esn, control, strict=True)]
        edits = esn_jax.stack([esn_jax.gain(np.zeros_like(esn[0]), top, site), *sum(per_emotion, ())])
        found = {"ids": [], "lengths": [], "labels": [], "items": []}
        seen = set()
        for name in names:
            batch = ctx.cache.load(name)
            rows = []
            for i in np.flatnonzero(batch["valid"]):
                if int(batch["labels"][i]) not in seen:
                    seen.add(int(batch["labels"][i]))
                    rows.append(i)
            if not rows:
                continue
            embedded = scoring.embed_jitted(ctx.model.module, ctx.model.params, ctx.inputs(batch))
            ids, lengths = ctx.generate(embedded, edits, ctx.cfg.says_tokens)  # [V, B, N], [V, B]
            found["ids"] += list(ids[:, rows].swapaxes(0, 1))
            found["lengths"] += list(lengths[:, rows].T)
            found["labels"] += [int(batch["labels"][i]) for i in rows]
            found["items"] += [str(batch["ids"][i]) for i in rows]
            if len(seen) == ctx.num_emotions:
                break
        order = np.argsort(found["labels"], kind="stable")
        ctx.store.save("says", **{k: np.asarray(v)[order] for k, v in found.items()})
    return ctx.store.load("says")


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
        inputs = ctx.place({"input_ids": ids, "attention_mask": mask})

        def call(part):
            return hosts.to_host(collateral.text_loss(ctx.model.module, ctx.model.params, inputs["input_ids"],
                                                      inputs["attention_mask"], part))
        loss = ctx.sizer.run(sizes.Shape("collateral", *ids.shape, len(flat) + 1), edits, call)
        ctx.store.save(name, clean=loss[0], masked=loss[1:].reshape(*masks.shape[:-2], -1), input_ids=ids,
                       attention_mask=mask, unknown_share=np.float64(unknown / mask.sum()))
        crash_point(name, 0)
    return ctx.store.load(name)
