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


# The encoders as one compiled program, shared by every caller that embeds a batch before a sweep (the compile
# cache lives on this object).
embed_jitted = jax.jit(embed, static_argnums=0)


def score_labels(module, params, batch: Mapping[str, Any], label_token_ids: Sequence[Sequence[int]],
                 interventions: Interventions | None = None, prefix=None) -> jnp.ndarray:
    """Log-probabilities of every label after the prompt: [B, N].

    batch: the port's forward kwargs (``input_ids`` [B, T] or ``inputs_embeds`` [B, T, H],
    ``attention_mask`` [B, T], ...), optionally ``answer_positions`` [B].
    label_token_ids: N token-id sequences. A single-token label set costs one forward pass; multi-token
    labels too: every label's tokens but its last, embedded by the port's ``embed_answer``, are packed after
    the prompt, each label's seeing only the prompt and itself (a [B, T, T] attention mask).
    interventions: see :mod:`ports.sites`; position-specific edits ``[L, B, T, I]`` cover the prompt.
    prefix: the key/value cache of tokens preceding every row (see :mod:`esn_jax.prefix`), or None.
    """
    labels = label_tokens(label_token_ids)
    p = 0 if prefix is None else jnp.shape(prefix["key"])[2]
    kw, positions, width = label_inputs(module, params, batch, labels, p)
    logits = module.apply({"params": params}, **kw, interventions=fit_edits(interventions or {}, width),
                          logits_positions=positions, prefix=prefix)
    return read_labels(logits, labels)


def label_inputs(module, params, batch: Mapping[str, Any], labels: LabelTokens,
                 prefix_length: int = 0) -> tuple[dict, jnp.ndarray, int]:
    """What one scoring forward takes: (the port's forward kwargs with the labels' teacher-forced tokens packed
    after the prompt, the positions whose logits :func:`read_labels` reads [B, S], the width T + F of the rows).

    Single-token labels need nothing appended: the kwargs are the batch's (S = 1, the answer position).
    prefix_length: P, the slots of a prefix cache the rows will attend to (their positions start after them).
    """
    answer = answer_positions(batch)
    model_kw = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
    if max(len(ids) for ids in labels) == 1:
        ref = batch["inputs_embeds"] if "inputs_embeds" in batch else batch["input_ids"]
        return model_kw, answer[:, None], ref.shape[1]
    # Every label's teacher-forced tokens (all but its last) are packed after the prompt in one row: label j's
    # tokens see the prompt and each other, never another label's. One forward of T + F tokens per prompt,
    # instead of one of T + M - 1 per prompt and label.
    forced = [ids[:-1] for ids in labels]
    segment = np.concatenate([np.full(len(f), j + 1, np.int32) for j, f in enumerate(forced)])
    offset = np.concatenate([np.arange(len(f), dtype=np.int32) for f in forced])
    packed = np.concatenate([np.asarray(f, np.int32) for f in forced])
    f = len(packed)
    # Appending label tokens is done on embeddings, so ports with several input streams need no special case.
    model_kw = embed(module, params, model_kw)
    x = model_kw["inputs_embeds"]
    b, t = x.shape[:2]
    label_embeds = module.apply({"params": params}, jnp.broadcast_to(jnp.asarray(packed), (b, f)),
                                method="embed_answer").astype(x.dtype)
    mask = model_kw.get("attention_mask")
    mask = jnp.ones((b, t), jnp.int32) if mask is None else jnp.asarray(mask)
    pos = model_kw.get("position_ids")
    pos = prefix_length + jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) if pos is None else jnp.asarray(pos)
    start = jnp.take_along_axis(pos, answer[:, None], axis=1) + 1
    seg = np.concatenate([np.zeros(t, np.int32), segment])
    same = (seg[None, :] == 0) | (seg[:, None] == seg[None, :])  # [T + F (query), T + F (key)]
    keys = jnp.concatenate([mask.astype(bool), jnp.ones((b, f), bool)], axis=1)
    kw = {k: v for k, v in model_kw.items() if k not in ("inputs_embeds", "attention_mask", "position_ids")}
    kw |= {"inputs_embeds": jnp.concatenate([x, label_embeds], axis=1),
           "attention_mask": jnp.asarray(same)[None] & keys[:, None, :],
           "position_ids": jnp.concatenate([pos, start + jnp.asarray(offset)], axis=1)}
    positions = jnp.concatenate([answer[:, None], jnp.broadcast_to(t + jnp.arange(f), (b, f))], axis=1)
    return kw, positions, t + f


def read_labels(logits, labels: LabelTokens) -> jnp.ndarray:
    """Logits [B, S, V] at :func:`label_inputs`' positions -> each label's log-prob [B, N].

    Label j's token i is predicted at the answer (i = 0, column 0) or at its own forced token i - 1 (column
    1 + that token's offset in the packed row).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    longest = max(len(ids) for ids in labels)
    where = np.zeros((len(labels), longest), np.int32)
    what = np.zeros((len(labels), longest), np.int32)
    valid = np.zeros((len(labels), longest), np.float32)
    first = 1
    for j, ids in enumerate(labels):
        where[j, 1:len(ids)] = np.arange(first, first + len(ids) - 1)
        what[j, :len(ids)], valid[j, :len(ids)] = ids, 1.0
        first += len(ids) - 1
    return (logp[:, where, what] * valid).sum(-1)  # [B, N, M] summed over each label's tokens


def fit_edits(interventions: Interventions, width: int) -> dict:
    """Fits position-specific edits ``[L, B, T, I]`` to rows of ``width`` >= T tokens (the labels' tokens packed
    after the prompt): the appended tokens get the identity edit; ``[L, I]``-style edits need nothing."""

    def fit(site, kind, value):
        value = jnp.asarray(value)
        if value.ndim == 4 and value.shape[2] > 1 and value.shape[2] < width:
            extra = width - value.shape[2]
            pad = jnp.full((*value.shape[:2], extra, value.shape[3]), IDENTITY[kind], value.dtype)
            value = jnp.concatenate([value, pad], axis=2)
        return value

    return map_edits(fit, dict(interventions))
