"""The prompt prefix every clip shares, run once per intervention instead of once per clip.

LALM prompts begin alike whatever the clip: system prompt, chat-template header, audio-start token.
Under an intervention that is the same at every position (edits [L, I]), those tokens' hidden states
are the same in every row, so a sweep runs them once per variant on a single row, keeps their keys and
values (the decoder's prefix cache, :mod:`ports.decoder`) and runs only the rest of each row against
that cache. What makes a token shareable is checked on the embedded batch, the same way for every
port: at the same offset from each row's first token, every row has the same embedding and position.
The first audio position differs between clips, so that is where the shared prefix ends.

Shapes: B = batch, T = prompt length, H = hidden, P = shared prefix length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ports.decoder import prefix_cache
from ports.sites import Interventions

# The keys of an embedded batch (see esn_jax.scoring.embed) that sharing knows how to split.
_SPLITTABLE = ("inputs_embeds", "attention_mask", "position_ids", "answer_positions")


def shared_length(batch: Mapping[str, Any]) -> int:
    """P, the number of leading tokens all rows share; 0 when there is nothing to share.

    batch: an embedded batch (``inputs_embeds`` [B, T, H], optional ``attention_mask`` [B, T],
    ``position_ids`` [B, T], ``answer_positions`` [B]). Rows may be left- or right-padded; a row whose
    attention mask has holes, a single row, or any other input key gives 0. P stops before every row's
    answer position, so each row keeps at least its answer token.
    """
    if set(batch) - set(_SPLITTABLE) or batch["inputs_embeds"].shape[0] < 2:
        return 0
    agree = np.asarray(_agreement(*(batch.get(k) for k in _SPLITTABLE)))
    return int(agree.argmin()) if not agree.all() else len(agree)


def _starts(mask) -> jnp.ndarray:
    """Each row's first attended position [B] (0 for a row without padding)."""
    return jnp.argmax(mask, axis=1).astype(jnp.int32)


@jax.jit
def _agreement(embeds, mask, positions, answers) -> jnp.ndarray:
    """[T] bool: whether offset j from each row's first token may belong to a shared prefix."""
    b, t, _ = embeds.shape
    mask = jnp.ones((b, t), jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
    answers = jnp.full((b,), t - 1, jnp.int32) if answers is None else jnp.asarray(answers, jnp.int32)
    start, length = _starts(mask), mask.sum(axis=1)
    last = t - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    contiguous = jnp.all(last - start + 1 == length)  # the default positions are then 0, 1, ... from the start
    offsets = jnp.arange(t)
    idx = jnp.minimum(start[:, None] + offsets, t - 1)
    aligned = jnp.take_along_axis(embeds, idx[..., None], axis=1)
    same = jnp.all(aligned == aligned[:1], axis=(0, 2))
    if positions is not None:
        pos = jnp.take_along_axis(jnp.asarray(positions), idx, axis=1)
        same &= jnp.all(pos == pos[:1], axis=0)
    return same & (offsets < jnp.min(answers - start)) & contiguous


def split(batch: Mapping[str, Any], p: int) -> tuple[dict, dict]:
    """(prefix [1, P], rest [B, T - P]): the shared first P tokens of row 0, and every row without them.

    The rest keeps each row's padding where it was, its position ids (when given) and answer position
    moved by −P; without ``position_ids`` the decoder numbers it from P on, as the full row would be.
    """
    embeds = batch["inputs_embeds"]
    b, t, _ = embeds.shape
    mask = batch.get("attention_mask")
    mask = jnp.ones((b, t), jnp.int32) if mask is None else jnp.asarray(mask)
    start = _starts(mask)
    cols = jnp.arange(t - p)
    idx = jnp.where(cols < start[:, None], cols, cols + p)  # skip columns [start, start + P) of each row
    own = jnp.arange(p) + start[0]
    head = {"inputs_embeds": embeds[:1, own]}
    rest = {"inputs_embeds": jnp.take_along_axis(embeds, idx[..., None], axis=1),
            "attention_mask": jnp.take_along_axis(mask, idx, axis=1)}
    if "position_ids" in batch:
        positions = jnp.asarray(batch["position_ids"])
        head["position_ids"] = positions[:1, own]
        rest["position_ids"] = jnp.take_along_axis(positions, idx, axis=1)
    if "answer_positions" in batch:
        rest["answer_positions"] = jnp.asarray(batch["answer_positions"]) - p
    return head, rest


def cache(module, params, head: Mapping[str, Any], interventions: Interventions) -> dict:
    """The prefix's keys and values under ``interventions`` (position-independent edits [L, I]):
    {"key", "value"} [L, 1, P, K, D], for ``prefix=`` of the port's forward."""
    p = head["inputs_embeds"].shape[1]
    _, state = module.apply({"params": params}, **head, interventions=interventions,
                            logits_positions=jnp.full((1, 1), p - 1, jnp.int32), mutable=["cache"])
    return prefix_cache(state)
