"""Many interventions at once: label log-probs for V stacked interventions on one batch.

The encoders (``embed_inputs``) run once per clip; only the decoder is vmapped over the variant axis
V, in chunks of ``chunk_size`` variants at a time (``lax.map`` over chunks), which bounds memory to
``chunk_size`` decoder passes. Any mask values of one shape share one compilation (per shared-prefix
length). When the edits are position-independent, the prompt prefix all clips share runs once per
variant rather than once per clip per variant (:mod:`esn_jax.prefix`); logits are computed only at
the answer position (:mod:`esn_jax.scoring`).

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
from ports.sites import Interventions, check_interventions


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
    out = _sweep(module, params, embedded, chunks, scoring.label_tokens(label_token_ids), p)
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
                label_token_ids: Sequence[Sequence[int]], prefix_length: int = 0) -> jax.stages.Lowered:
    """The program :func:`score_variants` runs, lowered for these arguments without running it: what the memory
    plan compiles (``.compile().memory_analysis()``). Every argument may be abstract (``jax.ShapeDtypeStruct``
    leaves, with shardings); nothing is allocated.

    embedded: the batch after the encoders (:func:`esn_jax.scoring.embed`): ``inputs_embeds`` [B, T, H],
    ``attention_mask`` [B, T], ...; chunks: edits [C, chunk, ...] (C calls of ``chunk`` vmapped variants, see
    :func:`chunk_variants`); prefix_length: P, the shared prompt prefix run once per variant (0: none).
    """
    return _sweep.lower(module, params, dict(embedded), chunks, scoring.label_tokens(label_token_ids), prefix_length)


@functools.partial(jax.jit, static_argnames=("module", "label_token_ids", "prefix_length"))
def _sweep(module, params, embedded, chunks, label_token_ids, prefix_length):
    head, rest = prefix.split(embedded, prefix_length) if prefix_length else (None, embedded)

    def score(edits):
        cache = prefix.cache(module, params, head, edits) if prefix_length else None
        return scoring.score_labels(module, params, rest, label_token_ids, edits, prefix=cache)
    out = jax.lax.map(jax.vmap(score), chunks)  # [V / chunk, chunk, B, N]
    return out.reshape(-1, *out.shape[2:])
