"""Many interventions at once: label log-probs for V stacked interventions on one batch.

The encoders (``embed_inputs``) run once per clip; only the decoder is vmapped over the variant axis
V, in chunks of ``chunk_size`` variants at a time (``lax.map`` over chunks), which bounds memory to
``chunk_size`` decoder passes. Of the decoder, what no mask changes runs once per clip too: everything below
the lowest layer any variant edits, that layer's attention and gate/up projections; and per variant the last
layer runs its queries, attention output and MLP only at the positions the labels read
(:mod:`ports.split_decoder`). When the edits are position-independent, the prompt prefix all clips share
runs once per variant rather than once per clip per variant (:mod:`esn_jax.prefix`). Any mask values of one
shape share one compilation per shared-prefix length and split layer (:func:`first_edited_layer`: a power of
two, so a few programs at most).

With ``drift=True`` the same program also measures how far each intervention moves the whole next-token
distribution at the answer position: KL(clean ‖ intervened) over the full vocabulary, the clean distribution
computed once per call from the same split forward (:func:`ports.split_decoder.above` with no edits).

Axes: V = variants, B = batch, N = labels, L = layers, I = neurons.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esn_jax import prefix, scoring
from esn_jax.stats import model_dims
from ports import split_decoder
from ports.decoder import language_model
from ports.sites import IDENTITY, Interventions, check_interventions


def num_variants(interventions: Interventions) -> int:
    """V, the shared leading axis of every edit in a stacked intervention."""
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(interventions)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"stacked interventions need one leading variant axis V on every edit; got sizes {sizes}")
    return sizes.pop()


def local_rows(x) -> np.ndarray:
    """What this process holds of an array [B, ...]: all of it, or in a multi-host run the rows on its own devices
    (each host checks the inputs it holds)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        rows = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas once
        return np.concatenate([np.asarray(rows[k]) for k in sorted(rows)])
    return np.asarray(x)


def score_variants(module, params, batch: Mapping[str, Any], interventions: Interventions,
                   label_token_ids: Sequence[Sequence[int]], chunk_size: int | None = None,
                   share_prefix: bool = True, drift: bool = False) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
    """Label log-probs under each of V interventions: [V, B, N]; with ``drift``, (log-probs [V, B, N], kl [V, B]).

    batch: the port's raw forward kwargs (see :func:`esn_jax.scoring.score_labels`).
    interventions: edits with a leading variant axis, e.g. ``interventions.ablate(masks [V, L, I])``.
    chunk_size: variants per vmapped step (default all V); V is padded up to a multiple of it.
    share_prefix: run the prompt prefix all rows share once per variant (position-independent edits only).
    drift: also return ``kl[v, b]`` = KL(clean ‖ variant v) = Σ_vocab p_clean (log p_clean − log p_v) of row b's
    next-token distribution at its answer position (float32 log-softmax over the whole vocabulary; clean: the
    unedited forward). Costs one more edit-free pass above the split layer per call and a [B, vocab] log-softmax
    per variant.
    """
    ref = batch["inputs_embeds"] if "inputs_embeds" in batch else batch["input_ids"]
    chunks, v = chunk_variants(params, interventions, tuple(np.shape(ref)[:2]), chunk_size)
    embedded = scoring.embed_jitted(module, params, dict(batch))
    position_independent = all(np.ndim(leaf) == 3 for leaf in jax.tree.leaves(interventions))  # [V, L, I]
    p = prefix.shared_length(embedded) if share_prefix and position_independent else 0
    cut = first_edited_layer(interventions, model_dims(params)[0])
    out = _sweep(module, params, embedded, chunks, scoring.label_tokens(label_token_ids), p, cut, drift)
    return (out[0][:v], out[1][:v]) if drift else out[:v]


def chunk_variants(params, interventions: Interventions, shape: tuple[int, int],
                   chunk_size: int | None = None) -> tuple[Interventions, int]:
    """Checks V stacked interventions against the model and a batch of ``shape`` (B, T), and splits them
    into chunks for ``lax.map``: (edits [ceil(V / chunk), chunk, ...], V).

    chunk_size: variants per chunk (default all V). The last chunk is filled up with copies of the first
    variant; callers drop the outputs past V.
    """
    v = num_variants(interventions)
    layers, neurons = model_dims(params)
    check_interventions(jax.tree.map(lambda x: x[0], interventions), layers, shape, neurons)
    chunk = v if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    chunk = min(chunk, v)
    pad = -v % chunk
    padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x,
                          interventions)
    return jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), padded), v


def lower_sweep(module, params, embedded: Mapping[str, Any], chunks: Interventions,
                label_token_ids: Sequence[Sequence[int]], prefix_length: int = 0, cut: int = 0,
                drift: bool = False) -> jax.stages.Lowered:
    """The program :func:`score_variants` runs, lowered for these arguments without running it: what the memory
    plan compiles (``.compile().memory_analysis()``). Every argument may be abstract (``jax.ShapeDtypeStruct``
    leaves, with shardings); nothing is allocated.

    embedded: the batch after the encoders (:func:`esn_jax.scoring.embed`): ``inputs_embeds`` [B, T, H],
    ``attention_mask`` [B, T], ...; chunks: edits [C, chunk, ...] (C calls of ``chunk`` vmapped variants, see
    :func:`chunk_variants`); prefix_length: P, the shared prompt prefix run once per variant (0: none); cut: the
    layer the forward is split at (:func:`first_edited_layer`; 0, the largest program, when planning); drift: the
    program that also returns the answer-position KL [C * chunk, B] (see :func:`score_variants`).
    """
    return _sweep.lower(module, params, dict(embedded), chunks, scoring.label_tokens(label_token_ids), prefix_length,
                        cut, drift)


@functools.partial(jax.jit, static_argnames=("module", "label_token_ids", "prefix_length", "cut", "drift"))
def _sweep(module, params, embedded, chunks, label_token_ids, prefix_length, cut, drift=False):
    head, rest = prefix.split(embedded, prefix_length) if prefix_length else (None, embedded)
    kw, positions, width = scoring.label_inputs(module, params, rest, label_token_ids, prefix_length)
    text, text_params = language_model(module, params)
    state = split_decoder.below(text, text_params, kw, head, cut, positions)  # once per clip, not per variant

    def logits(edits):  # [B, S, vocab] at the positions the labels read (column 0: the answer position)
        h = split_decoder.above(text, text_params, state, edits, cut, positions)
        return text.apply({"params": text_params}, h, method="logits")

    if not drift:
        def score(edits):
            return scoring.read_labels(logits(scoring.fit_edits(edits, width)), label_token_ids)
        out = jax.lax.map(jax.vmap(score), chunks)  # [V / chunk, chunk, B, N]
        return out.reshape(-1, *out.shape[2:])

    clean = _answer_logp(logits({}))  # [B, vocab], once per call: no edit anywhere

    def score_and_drift(edits):
        out = logits(scoring.fit_edits(edits, width))
        return scoring.read_labels(out, label_token_ids), _kl(clean, _answer_logp(out))
    logp, kl = jax.lax.map(jax.vmap(score_and_drift), chunks)  # [V / chunk, chunk, B, N], [V / chunk, chunk, B]
    return logp.reshape(-1, *logp.shape[2:]), kl.reshape(-1, kl.shape[-1])


def _answer_logp(logits) -> jnp.ndarray:
    """Logits [B, S, vocab] -> the answer position's (column 0) full next-token log-distribution [B, vocab]."""
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)


def _kl(p_logp, q_logp) -> jnp.ndarray:
    """KL(p ‖ q) of log-distributions [..., vocab] -> [...]; terms where p = 0 count 0."""
    p = jnp.exp(p_logp)
    return jnp.where(p > 0, p * (p_logp - q_logp), 0.0).sum(-1)


def first_edited_layer(interventions: Interventions, num_layers: int) -> int:
    """Where :func:`score_variants` splits the forward (:mod:`ports.split_decoder`): the lowest layer any variant
    edits, rounded down to a power of two so that a few compiled programs serve every mask (0 for traced edits;
    the last layer when nothing is edited)."""
    lowest = num_layers - 1
    for edit in interventions.values():
        for kind, value in edit.items():
            if isinstance(value, jax.core.Tracer):
                return 0
            value = np.asarray(value)  # [V, L, ...]
            changed = np.flatnonzero((value != IDENTITY[kind]).any(axis=(0, *range(2, value.ndim))))
            lowest = min(lowest, int(changed[0])) if changed.size else lowest
    return 0 if lowest == 0 else 1 << (lowest.bit_length() - 1)
