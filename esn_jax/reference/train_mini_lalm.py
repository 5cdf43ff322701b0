"""Training the mini-LALM's projector (:mod:`esn_jax.reference.mini_lalm`; Audio Flamingo 3's stage 1).

``python -m experiments.train_reference`` runs :func:`train` then :func:`write` (``configs/mini_lalm.py``).

Everything but the projector is frozen, and the frozen parts are computed once:

* every clip's audio tokens (Whisper tiny.en's encoder -> pool -> LayerNorm) once per clip, before training;
* the prompt's prefix before the audio (system prompt, user header) once, as a key/value cache
  (:mod:`ports.decoder`'s ``prefix``).

A training row is then the rest of the prompt: ``<sound>`` × the clip's audio tokens, the question, the
assistant header and the label word's tokens but its last (teacher-forced), left-padded to the row length of
its length bucket. The loss is the cross-entropy of the label word's tokens over the whole vocabulary;
gradients reach only the projector. AdamW (optax), jit-compiled, deterministic for a seed. Evaluation is the
study's prediction rule: constrained scoring over the label words (``esn_jax.score_labels``) on the
speaker-disjoint validation and test splits.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds

import esn_jax
from esn_jax.data import BUILDERS, pipeline
from esn_jax.reference import mini_lalm
from esn_jax.reference.train import optimizer, schedule
from ports.audio import splice
from ports.audio_flamingo3 import Projector
from ports.checkpoint import atomic_directory
from ports.convert import gguf_tokenizer
from ports.decoder import prefix_cache
from ports.packaged import smollm2_gguf

TOKENS_PER_SECOND = 25  # the encoder's rate after pooling (50 Hz frames, AvgPool1d(2))


def build_tokenizer():
    """SmolLM2's tokenizer (from its GGUF) with ``<sound>`` added as the next id, a special token."""
    tokenizer = gguf_tokenizer(smollm2_gguf())
    tokenizer.add_special_tokens({"additional_special_tokens": [mini_lalm.SOUND]})
    return tokenizer


class Prompt:
    """The prompt cut around its audio: ``prefix`` ids (before the first ``<sound>``), ``suffix`` ids (after
    the last), as the tokenizer splits the whole prompt."""

    def __init__(self, tokenizer, meta: dict[str, Any], sound: int):
        ids = [tokenizer.encode(mini_lalm.prompt(meta, n), add_special_tokens=False) for n in (1, 2)]
        first = ids[1].index(sound)
        self.prefix, self.suffix = ids[1][:first], ids[1][first + 2:]
        if ids[0] != [*self.prefix, sound, *self.suffix] or ids[1][first + 1] != sound:
            raise ValueError("the prompt does not tokenize as prefix + <sound> × n + suffix: the placeholders "
                             "merge with their neighbours")

    def rows(self, counts: np.ndarray, forced: list[tuple[int, ...]], width: int, sound: int, pad: int):
        """Left-padded rest rows [B, width] (ids) and their mask: <sound> × count, suffix, forced tokens."""
        ids = np.full((len(counts), width), pad, np.int32)
        mask = np.zeros((len(counts), width), np.int32)
        for i, (n, f) in enumerate(zip(counts, forced, strict=True)):
            row = [sound] * int(n) + self.suffix + list(f)
            ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        return ids, mask


def encode_split(module, params, dataset: str, split: str, data_dir, batch_size: int, buckets: tuple[float, ...]):
    """Every clip's audio tokens, once: (tokens [N, A, D] zero-padded to A = the longest bucket's count,
    counts [N], labels [N]). Clips longer than the longest bucket are truncated to it."""
    encode = jax.jit(lambda p, f, m: module.apply({"params": p}, f, m, method=lambda s, f, m: s.audio_tower(f, m)))
    pcfg = pipeline.PipelineConfig(model="audio_flamingo3", batch_size=batch_size, buckets=buckets, view="four",
                                   n_mels=module.config.audio.num_mel_bins)
    max_tokens = int(buckets[-1] * TOKENS_PER_SECOND)
    tokens, counts, labels = [], [], []
    for batch in pipeline.Batches(pipeline.read(dataset, split, data_dir, view="four"), pcfg):
        out, valid = encode(params, batch.features["input_features"], batch.features["input_features_mask"])
        n = np.asarray(valid).sum(-1)
        keep = batch.valid
        out = np.asarray(out)[:, :max_tokens]  # a bucket's window holds a token more than its clips give
        tokens.append(np.pad(out, ((0, 0), (0, max_tokens - out.shape[1]), (0, 0)))[keep])
        counts.append(n[keep])
        labels.append(batch.labels[keep])
    return np.concatenate(tokens), np.concatenate(counts), np.concatenate(labels)


def make_functions(module, prefix: dict, sound: int):
    """(train loss with grad, label scoring) over rest rows; both take the projector and the frozen params."""
    config = module.config
    projector = Projector(config.text.hidden_size, config.projector_bias)

    def embeds(params, ids, audio, counts):
        # The embedding comes from the traced params, not a closure: a closure would bake it into the program.
        text = params["language_model"]["model"]["embed_tokens"]["embedding"][ids]
        valid = jnp.arange(audio.shape[1])[None, :] < counts[:, None]
        audio = projector.apply({"params": params["multi_modal_projector"]}, audio)
        return splice(text, ids == sound, audio, valid)

    def loss_fn(proj, frozen, rows, mask, audio, counts, targets, target_mask):
        params = {**frozen, "multi_modal_projector": proj}
        m = targets.shape[1]
        positions = jnp.broadcast_to(rows.shape[1] - m + jnp.arange(m), targets.shape)
        # Targets are right-aligned like the rows: a label of m_i tokens is read at the last m_i positions.
        logits = module.apply({"params": params}, inputs_embeds=embeds(params, rows, audio, counts),
                              attention_mask=mask, logits_positions=positions, prefix=prefix)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
        return (nll * target_mask).sum(-1).mean()

    @jax.jit
    def grad(proj, frozen, *batch):
        return jax.value_and_grad(loss_fn)(proj, frozen, *batch)

    @functools.partial(jax.jit, static_argnums=6)
    def score(proj, frozen, rows, mask, audio, counts, label_tokens):
        params = {**frozen, "multi_modal_projector": proj}
        batch = {"inputs_embeds": embeds(params, rows, audio, counts), "attention_mask": mask}
        return esn_jax.score_labels(module, params, batch, label_tokens, prefix=prefix)

    return grad, score


def train(cfg: ml_collections.ConfigDict, data_dir: str | None = None, log: Callable[[str], None] = print):
    """Builds the corpus if needed, encodes it, trains the projector and evaluates.

    Returns ``(projector, tokenizer, meta)`` (``meta``: the directory's ``reference.json``).
    """
    name, variant = cfg.dataset.split("/")
    BUILDERS[name](data_dir=data_dir, config=variant).download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))  # a no-op once built
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    config, frozen = mini_lalm.frozen()
    sound = config.audio_token_id
    if tokenizer.convert_tokens_to_ids(mini_lalm.SOUND) != sound:
        raise ValueError(f"{mini_lalm.SOUND} got id {tokenizer.convert_tokens_to_ids(mini_lalm.SOUND)}; the model "
                         f"expects {sound} (one past SmolLM2's vocabulary)")
    label_token_ids = [tokenizer.encode(w, add_special_tokens=False) for w in cfg.labels]
    meta = {"labels": list(cfg.labels), "label_token_ids": label_token_ids, "question": cfg.question,
            "system": cfg.system or mini_lalm.SYSTEM, "dataset": cfg.dataset}
    module, params = mini_lalm.assemble(config, frozen, mini_lalm.init_projector(config, cfg.seed))
    proj = params.pop("multi_modal_projector")
    prompt = Prompt(tokenizer, meta, sound)
    _, state = module.apply({"params": {**frozen, "multi_modal_projector": proj}},
                            input_ids=np.asarray([prompt.prefix], np.int32), mutable=["cache"])
    prefix = prefix_cache(state)
    widths = [int(s * TOKENS_PER_SECOND) for s in cfg.buckets]
    splits = {}
    for split in ("train", "validation", "test"):
        splits[split] = encode_split(module, frozen, cfg.dataset, split, data_dir, cfg.eval_batch_size,
                                     tuple(cfg.buckets))
        log(f"encoded {split}: {len(splits[split][1])} clips ({time.perf_counter() - start:.0f} s)")
    encode_seconds = time.perf_counter() - start

    grad, score = make_functions(module, prefix, sound)
    labels_static = esn_jax.scoring.label_tokens(label_token_ids)
    longest = max(map(len, label_token_ids))
    forced = [tuple(ids[:-1]) for ids in label_token_ids]
    targets = np.zeros((len(label_token_ids), longest), np.int32)
    target_mask = np.zeros((len(label_token_ids), longest), np.float32)
    for j, ids in enumerate(label_token_ids):
        targets[j, longest - len(ids):], target_mask[j, longest - len(ids):] = ids, 1

    def evaluate(split: str) -> dict[str, Any]:
        tokens, counts, labels = splits[split]
        preds = []
        for lo in range(0, len(counts), cfg.eval_batch_size):
            sl = slice(lo, lo + cfg.eval_batch_size)
            n = len(counts[sl])
            rows_idx = np.resize(np.arange(n), cfg.eval_batch_size)  # a full batch: one compiled shape
            c = counts[sl][rows_idx]
            width = _width(c.max(), widths) + len(prompt.suffix)
            rows, mask = prompt.rows(c, [()] * len(c), width, sound, tokenizer.pad_token_id)
            logp = score(proj, frozen, rows, mask, tokens[sl][rows_idx], c, labels_static)
            preds.append(np.asarray(logp.argmax(-1))[:n])
        preds = np.concatenate(preds)
        return {"accuracy": float((preds == labels).mean()), "items": int(len(labels))}

    tokens, counts, labels = splits["train"]
    by_width = [np.flatnonzero(np.array([_width(c, widths) for c in counts]) == w) for w in widths]
    groups = [g for g in by_width if len(g)]
    group_widths = [w for w, g in zip(widths, by_width, strict=True) if len(g)]
    tx = optimizer(cfg)
    opt_state = tx.init(proj)
    plan = schedule([len(g) for g in groups], cfg.batch_size, cfg.steps, cfg.seed)
    log(f"train: {len(counts)} clips; rows of {[w + len(prompt.suffix) + longest - 1 for w in group_widths]} tokens "
        f"after a {len(prompt.prefix)}-token prefix; {sum(x.size for x in jax.tree.leaves(proj)):,} trained "
        "parameters")
    window = []
    for i, (g, pick) in enumerate(plan, 1):
        idx = groups[g][pick]
        y = labels[idx]
        rows, mask = prompt.rows(counts[idx], [forced[t] for t in y], group_widths[g] + len(prompt.suffix)
                                 + longest - 1, sound, tokenizer.pad_token_id)
        loss, grads = grad(proj, frozen, rows, mask, tokens[idx], counts[idx], targets[y], target_mask[y])
        updates, opt_state = tx.update(grads, opt_state, proj)
        proj = optax.apply_updates(proj, updates)
        window.append(float(loss))
        if i % cfg.log_every == 0 or i == len(plan):
            log(f"step {i}/{len(plan)}: loss {np.mean(window):.4f} ({time.perf_counter() - start:.0f} s)")
            window = []
        if cfg.eval_every and i % cfg.eval_every == 0 and i < len(plan):
            log(f"step {i}: validation accuracy {evaluate('validation')['accuracy']:.3f}")
    train_seconds = time.perf_counter() - start
    val, test = evaluate("validation"), evaluate("test")
    log(f"validation accuracy {val['accuracy']:.3f} ({val['items']} clips), test accuracy {test['accuracy']:.3f} "
        f"({test['items']} clips); chance {1 / len(cfg.labels):.2f}")
    meta |= {"validation_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
             "validation_items": val["items"], "test_items": test["items"], "seed": cfg.seed,
             "config": cfg.to_dict(), "encode_seconds": round(encode_seconds, 1),
             "train_seconds": round(train_seconds, 1), "provenance": mini_lalm.provenance()}
    return jax.tree.map(np.asarray, proj), tokenizer, meta


def _width(count: int, widths: list[int]) -> int:
    """The smallest bucket width holding ``count`` audio tokens."""
    return next((w for w in widths if count <= w), widths[-1])


def write(out: str | Path, projector, tokenizer, meta: dict[str, Any], overwrite: bool = False) -> Path:
    """Writes the mini-LALM directory ``out`` atomically (projector, tokenizer, reference.json)."""
    with atomic_directory(out, overwrite) as tmp:
        mini_lalm.write_projector(tmp / mini_lalm.PROJECTOR, projector)
        tokenizer.save_pretrained(tmp)
        (tmp / mini_lalm.META).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out).absolute()


__all__ = ["build_tokenizer", "train", "write"]
