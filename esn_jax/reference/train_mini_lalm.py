"""Training the mini-LALM's projector (:mod:`esn_jax.reference.mini_lalm`; Audio Flamingo 3's stage 1).

``python -m experiments.train_reference`` runs :func:`train` then :func:`write` (``configs/mini_lalm.py``).

Everything but the projector is frozen, and the frozen parts are computed once:

* every clip's audio tokens (Whisper tiny.en's encoder -> pool -> LayerNorm) once per clip, before training;
* the prompt's prefix before the audio (system prompt, user header) once, as a key/value cache
  (:mod:`ports.decoder`'s ``prefix``).

A training row is then the rest of the prompt: ``<sound>`` × the clip's audio tokens, the row's question (drawn
from :mod:`esn_jax.reference.wordings`' pool: a wording, an order and a listing of the label words), the
assistant header and the answer's tokens but its last (teacher-forced), left-padded to the row length of its
length bucket. The answer is the label word, or a short sentence holding it when the wording asks for one, and
ends with the chat's end-of-turn token, so that a free answer stops. The loss is the cross-entropy of the
answer's tokens over the whole vocabulary; gradients reach only the projector. AdamW (optax), jit-compiled,
deterministic for a seed. Evaluation is the study's prediction rule: constrained scoring over the label words
(``esn_jax.score_labels``) under the study's ``asked`` question on the speaker-disjoint validation and test splits
(``python -m experiments.evaluate`` measures the other wordings and free answers).
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
from esn_jax.reference import mini_lalm, wordings
from esn_jax.reference.train import optimizer, schedule
from ports.audio import splice
from ports.audio_flamingo3 import Projector
from ports.checkpoint import atomic_directory
from ports.convert import gguf_tokenizer
from ports.decoder import prefix_cache
from ports.packaged import smollm2_gguf

TOKENS_PER_SECOND = 25  # the encoder's rate after pooling (50 Hz frames, AvgPool1d(2))
END_OF_TURN = "<|im_end|>"  # SmolLM2's ChatML: every answer ends with it


def build_tokenizer():
    """SmolLM2's tokenizer (from its GGUF) with ``<sound>`` added as the next id, a special token."""
    tokenizer = gguf_tokenizer(smollm2_gguf())
    tokenizer.add_special_tokens({"additional_special_tokens": [mini_lalm.SOUND]})
    return tokenizer


class Prompt:
    """A prompt cut around its audio: ``prefix`` ids (before the first ``<sound>``), ``suffix`` ids (after the
    last), as the tokenizer splits the whole prompt of ``question``."""

    def __init__(self, tokenizer, question: str, system: str, sound: int):
        meta = {"question": question, "system": system}
        ids = [tokenizer.encode(mini_lalm.prompt(meta, n), add_special_tokens=False) for n in (1, 2)]
        first = ids[1].index(sound)
        self.prefix, self.suffix = ids[1][:first], ids[1][first + 2:]
        if ids[0] != [*self.prefix, sound, *self.suffix] or ids[1][first + 1] != sound:
            raise ValueError("the prompt does not tokenize as prefix + <sound> × n + suffix: the placeholders "
                             "merge with their neighbours")


def rest_rows(counts: np.ndarray, suffixes: list[list[int]], forced: list[list[int]], width: int, sound: int,
              pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded rest rows [B, width] (ids) and their mask: <sound> × count, the row's suffix, forced tokens."""
    ids = np.full((len(counts), width), pad, np.int32)
    mask = np.zeros((len(counts), width), np.int32)
    for i, (n, suffix, f) in enumerate(zip(counts, suffixes, forced, strict=True)):
        row = [sound] * int(n) + list(suffix) + list(f)
        if len(row) > width:
            raise ValueError(f"a training row of {len(row)} tokens does not fit the bucket's {width}")
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
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    labels = list(cfg.labels)
    label_token_ids = [tokenizer.encode(w, add_special_tokens=False) for w in labels]
    system = cfg.system or mini_lalm.SYSTEM
    meta = {"labels": labels, "label_token_ids": label_token_ids, "question": wordings.fill(wordings.ASKED, labels),
            "system": system, "dataset": cfg.dataset, "wordings": wordings.describe()}
    module, params = mini_lalm.assemble(config, frozen, mini_lalm.init_projector(config, cfg.seed))
    proj = params.pop("multi_modal_projector")
    asked = Prompt(tokenizer, meta["question"], system, sound)
    _, state = module.apply({"params": {**frozen, "multi_modal_projector": proj}},
                            input_ids=np.asarray([asked.prefix], np.int32), mutable=["cache"])
    prefix = prefix_cache(state)
    suffixes: dict[str, list[int]] = {}

    def suffix(question: str) -> list[int]:
        if question not in suffixes:
            cut = Prompt(tokenizer, question, system, sound)
            if cut.prefix != asked.prefix:  # the cached prefix must serve every question
                raise ValueError(f"the prompt before the audio depends on the question {question!r}")
            suffixes[question] = cut.suffix
        return suffixes[question]

    widths = [int(s * TOKENS_PER_SECOND) for s in cfg.buckets]
    splits = {}
    for split in ("train", "validation", "test"):
        splits[split] = encode_split(module, frozen, cfg.dataset, split, data_dir, cfg.eval_batch_size,
                                     tuple(cfg.buckets))
        log(f"encoded {split}: {len(splits[split][1])} clips ({time.perf_counter() - start:.0f} s)")
    encode_seconds = time.perf_counter() - start

    grad, score = make_functions(module, prefix, sound)
    labels_static = esn_jax.scoring.label_tokens(label_token_ids)

    def evaluate(split: str, items: int = 0) -> dict[str, Any]:
        """Constrained-scoring accuracy under the asked question on ``items`` clips (0: all; else stratified)."""
        tokens, counts, y = splits[split]
        keep = stratified(y, items, cfg.seed)
        tokens, counts, y = tokens[keep], counts[keep], y[keep]
        preds = []
        for lo in range(0, len(counts), cfg.eval_batch_size):
            sl = slice(lo, lo + cfg.eval_batch_size)
            n = len(counts[sl])
            rows_idx = np.resize(np.arange(n), cfg.eval_batch_size)  # a full batch: one compiled shape
            c = counts[sl][rows_idx]
            rows, mask = rest_rows(c, [asked.suffix] * len(c), [[]] * len(c), _width(c.max(), widths)
                                   + len(asked.suffix), sound, tokenizer.pad_token_id)
            logp = score(proj, frozen, rows, mask, tokens[sl][rows_idx], c, labels_static)
            preds.append(np.asarray(logp.argmax(-1))[:n])
        preds = np.concatenate(preds)
        return {"accuracy": float((preds == y).mean()), "items": int(len(y))}

    tokens, counts, y_train = splits["train"]
    by_width = [np.flatnonzero(np.array([_width(c, widths) for c in counts]) == w) for w in widths]
    groups = [g for g in by_width if len(g)]
    group_widths = [w for w, g in zip(widths, by_width, strict=True) if len(g)]
    # Every row's question and answer, drawn before training (seeded per step): the rows' length is known up front.
    plan = []
    for i, (g, pick) in enumerate(schedule([len(g) for g in groups], cfg.batch_size, cfg.steps, cfg.seed)):
        idx = groups[g][pick]
        rng = np.random.default_rng([cfg.seed, i])
        drawn = [wordings.draw(rng, labels, int(y_train[j])) for j in idx]
        answers = [tokenizer.encode(a, add_special_tokens=False) + [end_of_turn] for _, a in drawn]
        plan.append((g, idx, [suffix(q) for q, _ in drawn], answers))
    longest = max(len(a) for *_, answers in plan for a in answers)
    text = max(len(q) + len(a) - 1 for *_, qs, answers in plan for q, a in zip(qs, answers, strict=True))
    tx = optimizer(cfg)
    opt_state = tx.init(proj)
    log(f"train: {len(counts)} clips, {len(suffixes)} distinct questions; rows of "
        f"{[w + text for w in group_widths]} tokens after a {len(asked.prefix)}-token prefix; "
        f"{sum(x.size for x in jax.tree.leaves(proj)):,} trained parameters")
    window, curve = [], []
    for i, (g, idx, qs, answers) in enumerate(plan, 1):
        rows, mask = rest_rows(counts[idx], qs, [a[:-1] for a in answers], group_widths[g] + text, sound,
                               tokenizer.pad_token_id)
        targets, target_mask = right_aligned(answers, longest)
        loss, grads = grad(proj, frozen, rows, mask, tokens[idx], counts[idx], targets, target_mask)
        updates, opt_state = tx.update(grads, opt_state, proj)
        proj = optax.apply_updates(proj, updates)
        window.append(float(loss))
        if i % cfg.log_every == 0 or i == len(plan):
            curve.append({"step": i, "loss": round(float(np.mean(window)), 4),
                          "seconds": round(time.perf_counter() - start, 1)})
            log(f"step {i}/{len(plan)}: loss {curve[-1]['loss']:.4f} ({curve[-1]['seconds']:.0f} s)")
            window = []
        if cfg.eval_every and i % cfg.eval_every == 0 and i < len(plan):
            curve.append({"step": i, "validation_accuracy": evaluate("validation", cfg.eval_items)["accuracy"]})
            log(f"step {i}: validation accuracy {curve[-1]['validation_accuracy']:.3f} ({cfg.eval_items or 'all'} "
                "clips)")
    train_seconds = time.perf_counter() - start
    val, test = evaluate("validation", cfg.eval_items), evaluate("test")
    log(f"validation accuracy {val['accuracy']:.3f} ({val['items']} clips), test accuracy {test['accuracy']:.3f} "
        f"({test['items']} clips); chance {1 / len(cfg.labels):.2f}; {time.perf_counter() - start:.0f} s")
    meta |= {"validation_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
             "validation_items": val["items"], "test_items": test["items"], "seed": cfg.seed,
             "config": cfg.to_dict(), "encode_seconds": round(encode_seconds, 1),
             "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
             "curve": curve, "provenance": mini_lalm.provenance()}
    return jax.tree.map(np.asarray, proj), tokenizer, meta


def right_aligned(answers: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Answer tokens right-aligned in [B, width] (as the rows are), and their mask."""
    targets = np.zeros((len(answers), width), np.int32)
    mask = np.zeros((len(answers), width), np.float32)
    for i, a in enumerate(answers):
        targets[i, width - len(a):], mask[i, width - len(a):] = a, 1
    return targets, mask


def stratified(labels: np.ndarray, items: int, seed: int) -> np.ndarray:
    """Sorted indices of ``items`` rows drawn per class in turn from a seeded shuffle (0 or more than all: all)."""
    if not items or items >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == k))) for k in np.unique(labels)]
    picked = []
    while len(picked) < items:
        for q in queues:
            if q and len(picked) < items:
                picked.append(q.pop(0))
    return np.sort(np.asarray(picked))


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
