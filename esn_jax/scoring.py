"""Constrained label scoring at the answer position: the study's prediction rule.

A label is a token sequence; its score is ``log p(label tokens | prompt)``, the whole sequence
teacher-forced after the prompt. The prompt ends at the answer position: position ``T - 1`` for
left-padded prompts, or ``batch["answer_positions"] [B]`` when given (then everything after it in a
row must be padding). Logits are computed only at the positions the labels need.

Shapes: B = batch, T = prompt length, H = hidden, N = labels, M = longest label (tokens).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ports.sites import IDENTITY, Interventions, map_edits

LabelTokens = tuple[tuple[int, ...], ...]

_NOT_MODEL_INPUTS = ("answer_positions",)


def label_tokens(label_token_ids: Sequence[Sequence[int]]) -> LabelTokens:
    """Normalises label token ids to a hashable tuple of tuples (a static jit argument)."""
    labels = tuple(tuple(int(t) for t in ids) for ids in label_token_ids)
    if not labels or any(not ids for ids in labels):
        raise ValueError(f"every label needs at least one token; got {label_token_ids!r}")
    return labels


def answer_positions(batch: Mapping[str, Any]) -> jnp.ndarray:
    """The answer position of every row [B]: ``batch["answer_positions"]`` or ``T - 1``."""
    if "answer_positions" in batch:
        return jnp.asarray(batch["answer_positions"], jnp.int32)
    ref = batch["inputs_embeds"] if "inputs_embeds" in batch else batch["input_ids"]
    b, t = ref.shape[:2]
    return jnp.full((b,), t - 1, jnp.int32)


def split_inputs(module, batch: Mapping[str, Any]) -> tuple[dict, dict]:
    """Splits raw model inputs into ``(embed_kwargs, call_kwargs)``.

    ``embed_kwargs`` go to the port's ``embed_inputs`` (token ids, audio features, ...);
    ``call_kwargs`` (attention_mask, position_ids, ...) go to ``__call__`` next to ``inputs_embeds``.
    """
    embed_params = set(inspect.signature(module.embed_inputs).parameters)
    call_params = set(inspect.signature(module.__call__).parameters)
    embed_kw, call_kw = {}, {}
    for key, value in batch.items():
        if key in _NOT_MODEL_INPUTS:
            continue
        if key in embed_params:
            embed_kw[key] = value
        if key in call_params and (key not in embed_params or key in ("attention_mask", "position_ids")):
            call_kw[key] = value
    return embed_kw, call_kw


def embed(module, params, batch: Mapping[str, Any]) -> dict:
    """The batch with its raw inputs replaced by ``inputs_embeds`` [B, T, H] (the encoders run here)."""
    if "inputs_embeds" in batch:
        return dict(batch)
    embed_kw, call_kw = split_inputs(module, batch)
    out = dict(call_kw, inputs_embeds=module.apply({"params": params}, **embed_kw, method="embed_inputs"))
    if "answer_positions" in batch:
        out["answer_positions"] = batch["answer_positions"]
    return out


def _extend_edits(interventions: Interventions, repeats: int, extra: int, batch: int, length: int):
    """Fits position-specific edits ``[L, B, T, I]`` to rows repeated per label and ``extra`` appended tokens.

    Appended (label) tokens get the identity edit; ``[L, I]``-style edits need nothing.
    """

    def fit(site, kind, value):
        value = jnp.asarray(value)
        if value.ndim == 4:
            if value.shape[1] == batch and repeats > 1:
                value = jnp.repeat(value, repeats, axis=1)
            if value.shape[2] == length and extra:
                pad = jnp.full((*value.shape[:2], extra, value.shape[3]), IDENTITY[kind], value.dtype)
                value = jnp.concatenate([value, pad], axis=2)
        return value

    return map_edits(fit, interventions)


def score_labels(module, params, batch: Mapping[str, Any], label_token_ids: Sequence[Sequence[int]],
                 interventions: Interventions | None = None, prefix=None) -> jnp.ndarray:
    """Log-probabilities of every label after the prompt: [B, N].

    batch: the port's forward kwargs (``input_ids`` [B, T] or ``inputs_embeds`` [B, T, H],
    ``attention_mask`` [B, T], ...), optionally ``answer_positions`` [B].
    label_token_ids: N token-id sequences. A single-token label set costs one forward pass; with
    multi-token labels the prompt is embedded once and each row is run once per label with the label's
    tokens, embedded by the port's ``embed_answer``, appended.
    interventions: see :mod:`ports.sites`; position-specific edits ``[L, B, T, I]`` cover the prompt.
    prefix: the key/value cache of tokens preceding every row (see :mod:`esn_jax.prefix`), or None.
    """
    labels = label_tokens(label_token_ids)
    interventions = dict(interventions or {})
    answer = answer_positions(batch)
    model_kw = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
    longest = max(len(ids) for ids in labels)
    if longest == 1:
        logits = module.apply({"params": params}, **model_kw, interventions=interventions,
                              logits_positions=answer[:, None], prefix=prefix)
        logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)
        return logp[:, jnp.asarray([ids[0] for ids in labels])]
    return _score_multi_token(module, params, model_kw, labels, longest, answer, interventions, prefix)


def _score_multi_token(module, params, model_kw, labels: LabelTokens, longest: int, answer, interventions, prefix):
    n = len(labels)
    ids = np.zeros((n, longest), np.int32)
    valid = np.zeros((n, longest), np.float32)
    for j, seq in enumerate(labels):
        ids[j, : len(seq)] = seq
        valid[j, : len(seq)] = 1.0
    extra = longest - 1
    # Appending label tokens is done on embeddings, so ports with several input streams need no special case.
    model_kw = embed(module, params, model_kw)
    b, t = model_kw["inputs_embeds"].shape[:2]
    # Row b*n + j holds prompt b followed by label j's teacher-forced tokens (all but its last).
    forced = jnp.tile(jnp.asarray(ids[:, :extra]), (b, 1))

    def rep(x):
        return jnp.repeat(x, n, axis=0)

    label_embeds = module.apply({"params": params}, forced, method="embed_answer")
    kw = {"inputs_embeds": jnp.concatenate([rep(model_kw["inputs_embeds"]),
                                            label_embeds.astype(model_kw["inputs_embeds"].dtype)], axis=1)}
    mask = model_kw.get("attention_mask")
    mask = jnp.ones((b, t), jnp.int32) if mask is None else jnp.asarray(mask)
    kw["attention_mask"] = jnp.concatenate([rep(mask), jnp.ones((b * n, extra), mask.dtype)], axis=1)
    if "position_ids" in model_kw:
        pos = jnp.asarray(model_kw["position_ids"])
        start = jnp.take_along_axis(pos, answer[:, None], axis=1) + 1
        kw["position_ids"] = jnp.concatenate([rep(pos), rep(start + jnp.arange(extra, dtype=pos.dtype))], axis=1)
    for key, value in model_kw.items():
        if key not in ("inputs_embeds", "attention_mask", "position_ids"):
            kw[key] = rep(value)
    positions = jnp.concatenate([rep(answer)[:, None], jnp.broadcast_to(t + jnp.arange(extra), (b * n, extra))],
                                axis=1)
    edits = _extend_edits(interventions, n, extra, b, t)
    logits = module.apply({"params": params}, **kw, interventions=edits, logits_positions=positions, prefix=prefix)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B*N, M, vocab]
    targets = jnp.tile(jnp.asarray(ids), (b, 1))
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return (token_logp * jnp.tile(jnp.asarray(valid), (b, 1))).sum(-1).reshape(b, n)
