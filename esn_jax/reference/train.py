"""Training the reference LALM (DESIGN §5): a small Qwen2.5-Omni thinker that answers an emotion question.

``python -m experiments.train_reference`` runs :func:`train` then :func:`write`.

The model is our port's code (:mod:`ports.qwen2_5_omni`) at toy size with its own word-level tokenizer
(Qwen2.5-Omni's special tokens + the words of the prompt and the labels, each label one token). Each
clip's prompt is Omni's chat layout with the clip's audio tokens and the question; the loss is the
cross-entropy of the label word at the answer position (the last prompt token of left-padded batches).
AdamW (optax), jit-compiled, one compiled shape per length bucket, deterministic for a seed. Evaluation is
the study's prediction rule, constrained scoring over the label tokens (``esn_jax.score_labels``), on
the speaker-disjoint validation and test splits.

DIR is written atomically: port.json + params/ (``ports.save``), tokenizer.json + tokenizer_config.json and
reference.json (the contract in :mod:`esn_jax.reference`). The corpus is built first if ``--data_dir``
lacks it (about half a minute for ``small``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
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
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import esn_jax
import ports
from esn_jax import reference
from esn_jax.data import BUILDERS, pipeline
from ports import prompts
from ports.audio import AudioEncoderConfig
from ports.checkpoint import atomic_directory
from ports.config import DecoderConfig
from ports.features import SAMPLE_RATE
from ports.qwen2_5_omni import Qwen2_5OmniConfig, Qwen2_5OmniThinker, init_inputs

PAD, AUDIO, AUDIO_BOS, AUDIO_EOS = "<|endoftext|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
SPECIAL = (PAD, "<|im_start|>", "<|im_end|>", AUDIO, AUDIO_BOS, AUDIO_EOS)
UNK = "<unk>"  # word-level models need one; no prompt of ours produces it
# Words, single punctuation marks and newlines are tokens; other whitespace only separates them.
_PRE_TOKENIZER = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
                                          pre_tokenizers.Split(Regex(r"\n|[^\w\s]"), behavior="isolated")])


def build_tokenizer(question: str, labels: tuple[str, ...], system: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the special tokens, the prompt's words and the label words (in that order)."""
    text = reference.prompt({"question": question, "system": system}, 1)
    plain = re.sub("|".join(map(re.escape, SPECIAL)), " ", text) + " " + " ".join(labels)
    words = list(dict.fromkeys(w for w, _ in _PRE_TOKENIZER.pre_tokenize_str(plain)))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate([*SPECIAL, UNK, *words])}, unk_token=UNK))
    tok.pre_tokenizer = _PRE_TOKENIZER
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token="<|im_end|>")
    for label in labels:
        if len(out(label, add_special_tokens=False)["input_ids"]) != 1:
            raise ValueError(f"label {label!r} is not one token")
    return out


def model_config(cfg: ml_collections.ConfigDict, tokenizer) -> Qwen2_5OmniConfig:
    """The thinker's config: sizes from ``cfg``, vocabulary and special-token ids from ``tokenizer``."""
    text = cfg.text.to_dict()
    decoder = DecoderConfig(vocab_size=len(tokenizer), head_dim=text["hidden_size"] // text["num_attention_heads"],
                            **text)
    audio = AudioEncoderConfig(**cfg.audio.to_dict(), positions="sinusoidal", pool=True,
                               output_dim=decoder.hidden_size)
    ids = tokenizer.convert_tokens_to_ids([AUDIO, AUDIO_BOS, AUDIO_EOS])
    return Qwen2_5OmniConfig(audio=audio, text=decoder, audio_token_id=ids[0], audio_start_token_id=ids[1],
                             audio_end_token_id=ids[2], hf_prefix="")


def _pipeline_config(cfg, batch_size: int) -> pipeline.PipelineConfig:
    return pipeline.PipelineConfig(model="qwen2_5_omni", batch_size=batch_size, buckets=tuple(cfg.buckets),
                                   view="four", n_mels=cfg.audio.num_mel_bins)


def train_arrays(cfg, tokenizer, meta, data_dir) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """The train split as one ``(model inputs, labels [n])`` pair per length bucket, all clips of a bucket
    in one array (features computed once; steps draw batches from them)."""
    by_bucket: dict[float, list[pipeline.Example]] = {}
    for ex in pipeline.read(cfg.dataset, "train", data_dir, view="four"):
        bucket = pipeline.bucket_of(ex.wave.size, cfg.buckets)
        if bucket is None:  # truncated to the longest bucket, as the pipeline does
            bucket, ex = cfg.buckets[-1], dataclasses.replace(ex, wave=ex.wave[:int(cfg.buckets[-1] * SAMPLE_RATE)])
        by_bucket.setdefault(bucket, []).append(ex)
    out = []
    for bucket in sorted(by_bucket):
        group = by_bucket[bucket]
        batch = pipeline.make_batch(group, bucket, _pipeline_config(cfg, len(group)))
        out.append((reference.model_batch(tokenizer, meta, batch.features), batch.labels))
    return out


def schedule(sizes: list[int], batch_size: int, steps: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """``steps`` batches as (bucket, row indices [batch_size]): epochs of shuffled buckets cut into full
    batches (a bucket's last batch wraps around to its start), the batches of an epoch shuffled."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, np.ndarray]] = []
    while len(out) < steps:
        epoch = []
        for b, n in enumerate(sizes):
            order = rng.permutation(n)
            order = np.resize(order, math.ceil(n / batch_size) * batch_size)
            epoch += [(b, rows) for rows in order.reshape(-1, batch_size)]
        out += [epoch[i] for i in rng.permutation(len(epoch))]
    return out[:steps]


def optimizer(cfg) -> optax.GradientTransformation:
    o = cfg.optimizer
    lr = optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, max(cfg.steps, o.warmup_steps + 1))
    return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                       optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))


def make_train_step(module, tx, label_ids: jnp.ndarray) -> Callable:
    """(params, opt_state, batch, labels [B]) -> (params, opt_state, loss, accuracy), jit-compiled."""

    def loss_fn(params, batch, labels):
        answer = jnp.full((batch["input_ids"].shape[0], 1), batch["input_ids"].shape[1] - 1)
        logits = module.apply({"params": params}, **batch, logits_positions=answer)[:, 0]
        targets = label_ids[labels]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()
        # Constrained accuracy, as evaluation predicts: argmax over the label tokens only.
        acc = (logits[:, label_ids].argmax(-1) == labels).mean()
        return loss, acc

    @jax.jit
    def step(params, opt_state, batch, labels):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    return step


def make_score(module, label_token_ids) -> Callable:
    """(params, batch) -> log-probabilities of the labels [B, N] (``esn_jax.score_labels``), jit-compiled."""
    labels = esn_jax.scoring.label_tokens(label_token_ids)
    return jax.jit(lambda p, b: esn_jax.score_labels(module, p, b, labels))


def evaluate(score, params, tokenizer, meta, cfg, split: str, data_dir) -> dict[str, Any]:
    """Constrained-scoring accuracy over a split, read through the pipeline's fixed-shape batches."""
    right = total = 0
    for batch in pipeline.Batches(pipeline.read(cfg.dataset, split, data_dir, view="four"),
                                  _pipeline_config(cfg, cfg.eval_batch_size)):
        preds = np.asarray(score(params, reference.model_batch(tokenizer, meta, batch.features)).argmax(-1))
        right += int((preds == batch.labels)[batch.valid].sum())
        total += int(batch.valid.sum())
    return {"accuracy": right / total, "items": total}


def train(cfg: ml_collections.ConfigDict, data_dir: str | None = None, log: Callable[[str], None] = print):
    """Builds the corpus if needed, trains and evaluates. Returns ``(config, params, tokenizer, meta)``."""
    name, variant = cfg.dataset.split("/")
    BUILDERS[name](data_dir=data_dir, config=variant).download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))  # a no-op once built
    start = time.perf_counter()
    system = cfg.system or prompts.OMNI_VOICE_SYSTEM  # the toy is trained with it (written out for the study)
    tokenizer = build_tokenizer(cfg.question, tuple(cfg.labels), system)
    label_token_ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in cfg.labels]
    meta = {"labels": list(cfg.labels), "label_token_ids": label_token_ids, "question": cfg.question,
            "system": system, "dataset": cfg.dataset}
    config = model_config(cfg, tokenizer)
    module = Qwen2_5OmniThinker(config)
    key = jax.random.key(cfg.seed)
    params = jax.jit(module.init)(key, **init_inputs(config))["params"]
    tx = optimizer(cfg)
    opt_state = tx.init(params)
    data = train_arrays(cfg, tokenizer, meta, data_dir)
    log(f"train: {sum(len(y) for _, y in data)} clips in buckets of shapes "
        f"{[tuple(x['input_ids'].shape) for x, _ in data]}; {config.text.vocab_size} tokens; "
        f"{sum(x.size for x in jax.tree.leaves(params)):,} parameters")
    step = make_train_step(module, tx, jnp.asarray([ids[0] for ids in label_token_ids]))
    plan = schedule([len(y) for _, y in data], cfg.batch_size, cfg.steps, cfg.seed)
    window: list[tuple[float, float]] = []
    for i, (b, rows) in enumerate(plan, 1):
        inputs, labels = data[b]
        batch = {k: v[rows] for k, v in inputs.items()}
        params, opt_state, loss, acc = step(params, opt_state, batch, labels[rows])
        window.append((loss, acc))
        if i % cfg.log_every == 0 or i == len(plan):
            losses, accs = np.asarray(window).T
            log(f"step {i}/{len(plan)}: loss {losses.mean():.4f}, train accuracy {accs.mean():.3f} "
                f"({time.perf_counter() - start:.0f} s)")
            window = []
    train_seconds = time.perf_counter() - start
    score = make_score(module, label_token_ids)
    val = evaluate(score, params, tokenizer, meta, cfg, "validation", data_dir)
    test = evaluate(score, params, tokenizer, meta, cfg, "test", data_dir)
    log(f"validation accuracy {val['accuracy']:.3f} ({val['items']} clips), test accuracy "
        f"{test['accuracy']:.3f} ({test['items']} clips); chance {1 / len(cfg.labels):.2f}")
    meta |= {"validation_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
             "validation_items": val["items"], "test_items": test["items"], "seed": cfg.seed,
             "config": cfg.to_dict(), "train_seconds": round(train_seconds, 1)}
    return config, jax.tree.map(np.asarray, params), tokenizer, meta


def write(out: str | Path, config, params, tokenizer, meta: dict[str, Any], overwrite: bool = False) -> Path:
    """Writes the reference directory ``out`` atomically (checkpoint, tokenizer, reference.json)."""
    with atomic_directory(out, overwrite) as tmp:
        ports.save(tmp, "qwen2_5_omni", config, params, overwrite=True)  # into the empty temporary directory
        tokenizer.save_pretrained(tmp)
        (tmp / reference.META).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out).absolute()
