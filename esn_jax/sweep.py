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


def score_variants(module, params, batch: Mapping[str, Any], interventions: Interventions,
                   label_token_ids: Sequence[Sequence[int]], chunk_size: int | None = None,
                   share_prefix: bool = True) -> jnp.ndarray:
    """Label log-probs under each of V interventions: [V, B, N].

    batch: the port's raw forward kwargs (see :func:`esn_jax.scoring.score_labels`).
    interventions: edits with a leading variant axis, e.g. ``interventions.ablate(masks [V, L, I])``.
    chunk_size: variants per vmapped step (default all V); V is padded up to a multiple of it.
    share_prefix: run the prompt prefix all rows share once per variant (position-independent edits only).
    """
    ref = batch["inputs_embeds"] if "inputs_embeds" in batch else batch["input_ids"]
    chunks, v = chunk_variants(params, interventions, tuple(np.shape(ref)[:2]), chunk_size)
    embedded = scoring.embed_jitted(module, params, dict(batch))
    position_independent = all(np.ndim(leaf) == 3 for leaf in jax.tree.leaves(interventions))  # [V, L, I]
    p = prefix.shared_length(embedded) if share_prefix and position_independent else 0
    cut = first_edited_layer(interventions, model_dims(params)[0])
    out = _sweep(module, params, embedded, chunks, scoring.label_tokens(label_token_ids), p, cut)
    return out[:v]


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
                label_token_ids: Sequence[Sequence[int]], prefix_length: int = 0, cut: int = 0) -> jax.stages.Lowered:
    """The program :func:`score_variants` runs, lowered for these arguments without running it: what the memory
    plan compiles (``.compile().memory_analysis()``). Every argument may be abstract (``jax.ShapeDtypeStruct``
    leaves, with shardings); nothing is allocated.

    embedded: the batch after the encoders (:func:`esn_jax.scoring.embed`): ``inputs_embeds`` [B, T, H],
    ``attention_mask`` [B, T], ...; chunks: edits [C, chunk, ...] (C calls of ``chunk`` vmapped variants, see
    :func:`chunk_variants`); prefix_length: P, the shared prompt prefix run once per variant (0: none); cut: the
    layer the forward is split at (:func:`first_edited_layer`; 0, the largest program, when planning).
    """
    return _sweep.lower(module, params, dict(embedded), chunks, scoring.label_tokens(label_token_ids), prefix_length,
                        cut)


@functools.partial(jax.jit, static_argnames=("module", "label_token_ids", "prefix_length", "cut"))
def _sweep(module, params, embedded, chunks, label_token_ids, prefix_length, cut):
    head, rest = prefix.split(embedded, prefix_length) if prefix_length else (None, embedded)
    kw, positions, width = scoring.label_inputs(module, params, rest, label_token_ids, prefix_length)
    text, text_params = language_model(module, params)
    state = split_decoder.below(text, text_params, kw, head, cut, positions)  # once per clip, not per variant

    def score(edits):
        h = split_decoder.above(text, text_params, state, scoring.fit_edits(edits, width), cut, positions)
        return scoring.read_labels(text.apply({"params": text_params}, h, method="logits"), label_token_ids)
    out = jax.lax.map(jax.vmap(score), chunks)  # [V / chunk, chunk, B, N]
    return out.reshape(-1, *out.shape[2:])


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
