"""Streaming identification statistics: per emotion, layer and neuron, accumulated batch by batch.

Nothing is cached across batches: each step captures one batch's site activations ``[L, B, T, I]``,
reduces them to ``[E, L, I]`` sums inside jit and drops them. Statistics add up (``a + b`` is the
statistics of the union of their items), so runs can resume from a checkpoint and shard over hosts.

Axes: E = emotions, L = layers, I = neurons per layer (intermediate size), B = batch, T = sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from esn_jax import scoring
from ports.sites import SITES, capture_filter, collect

POSITIONS = ("all", "audio", "answer")


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """What the statistics pool over.

    site: the neuron site (:data:`ports.SITES`). positions: ``all`` tokens (attention_mask), ``audio``
    tokens (a position mask the caller passes) or the ``answer`` position. success_filter: count only
    items the unedited model labels correctly by constrained scoring.
    """

    site: str = "gate_act"
    positions: str = "all"
    success_filter: bool = True

    def __post_init__(self):
        if self.site not in SITES:
            raise ValueError(f"unknown site {self.site!r} (sites: {SITES})")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r} (choose from {POSITIONS})")


@flax.struct.dataclass
class EmotionStats:
    """Sufficient statistics of one site's activations, per emotion.

    count_pos [E, L, I] int32: tokens with activation > 0. sum, sum_sq [E, L, I] float32.
    tokens [E] int32: pooled tokens. items [E] int32: items that passed the success filter.
    items_seen [E] int32: all items offered. The static fields record the model and pooling the
    statistics came from, so that they are never combined with or applied to another model.
    """

    count_pos: jnp.ndarray
    sum: jnp.ndarray
    sum_sq: jnp.ndarray
    tokens: jnp.ndarray
    items: jnp.ndarray
    items_seen: jnp.ndarray
    num_layers: int = flax.struct.field(pytree_node=False)
    intermediate_size: int = flax.struct.field(pytree_node=False)
    site: str = flax.struct.field(pytree_node=False)
    positions: str = flax.struct.field(pytree_node=False)

    @classmethod
    def zeros(cls, num_emotions: int, num_layers: int, intermediate_size: int,
              config: StatsConfig = StatsConfig()) -> EmotionStats:
        shape = (num_emotions, num_layers, intermediate_size)
        counts = jnp.zeros((num_emotions,), jnp.int32)
        return cls(jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32),
                   counts, counts, counts, num_layers, intermediate_size, config.site, config.positions)

    @property
    def num_emotions(self) -> int:
        return self.tokens.shape[0]

    def __add__(self, other: EmotionStats) -> EmotionStats:
        """The statistics of both item sets together."""
        if not isinstance(other, EmotionStats):
            return NotImplemented
        mine, theirs = self._provenance(), other._provenance()
        if mine != theirs:
            raise ValueError(f"cannot merge statistics of different origins: {mine} vs {theirs}")
        return jax.tree.map(jnp.add, self, other)

    def _provenance(self) -> dict[str, Any]:
        return dict(num_emotions=self.num_emotions, num_layers=self.num_layers,
                    intermediate_size=self.intermediate_size, site=self.site, positions=self.positions)

    def check_model(self, num_layers: int, intermediate_size: int) -> None:
        """Raises a ValueError when these statistics come from a model of another shape."""
        if (self.num_layers, self.intermediate_size) != (num_layers, intermediate_size):
            raise ValueError(f"statistics are for a model with L={self.num_layers}, I={self.intermediate_size}; "
                             f"this model has L={num_layers}, I={intermediate_size}")

    def probability(self) -> jnp.ndarray:
        """P = count_pos / tokens [E, L, I]; 0 for an emotion without tokens."""
        return self.count_pos / jnp.maximum(self.tokens, 1)[:, None, None]

    def mean(self) -> jnp.ndarray:
        """μ [E, L, I]; 0 for an emotion without tokens."""
        return self.sum / jnp.maximum(self.tokens, 1)[:, None, None]

    def std(self) -> jnp.ndarray:
        """σ [E, L, I] (population); 0 for an emotion without tokens."""
        var = self.sum_sq / jnp.maximum(self.tokens, 1)[:, None, None] - self.mean() ** 2
        return jnp.sqrt(jnp.maximum(var, 0.0))

    def pooled_mean(self) -> jnp.ndarray:
        """μ over all emotions' tokens together [L, I] (the value mean-ablation writes)."""
        return self.sum.sum(0) / jnp.maximum(self.tokens.sum(), 1)


def model_dims(params: Mapping[str, Any]) -> tuple[int, int]:
    """(L, I) of a port's decoder, read from its scanned ``layers/mlp/down_proj/kernel`` [L, I, H] (the shared
    decoder's: Kimi-Audio's audio-output branch, ``mimo_layers``, carries no neuron sites)."""
    found = []

    def walk(tree, path):
        for key, sub in tree.items():
            if isinstance(sub, Mapping):
                walk(sub, (*path, key))
            elif (*path, key)[-4:] == ("layers", "mlp", "down_proj", "kernel"):
                found.append(tuple(np.shape(sub)))

    walk(params, ())
    if len(found) != 1 or len(found[0]) != 3:
        raise ValueError(f"expected one scanned layers/mlp/down_proj/kernel [L, I, H] in params; found {found}")
    return found[0][0], found[0][1]


def accumulate(stats: EmotionStats, acts: jnp.ndarray, labels: jnp.ndarray, positions: jnp.ndarray,
               keep: jnp.ndarray) -> EmotionStats:
    """Adds one batch of captured activations.

    acts [L, B, T, I]; labels [B] int (emotion index); positions [B, T] bool: the pooled tokens;
    keep [B] bool: the items that count (real rows that passed the success filter).
    """
    onehot = jax.nn.one_hot(labels, stats.num_emotions, dtype=jnp.float32) * keep[:, None]
    w = positions.astype(jnp.float32)
    acts = acts.astype(jnp.float32)

    def pooled(x):
        return jnp.einsum("be,bt,lbti->eli", onehot, w, x, precision=jax.lax.Precision.HIGHEST)
    return stats.replace(
        count_pos=stats.count_pos + pooled((acts > 0).astype(jnp.float32)).round().astype(jnp.int32),
        sum=stats.sum + pooled(acts),
        sum_sq=stats.sum_sq + pooled(acts * acts),
        tokens=stats.tokens + jnp.einsum("be,bt->e", onehot, w).round().astype(jnp.int32),
        items=stats.items + onehot.sum(0).astype(jnp.int32),
    )


def position_mask(batch: Mapping[str, Any], positions: str, audio_mask=None) -> jnp.ndarray:
    """The pooled positions [B, T] bool: all real tokens, the audio tokens, or the answer position."""
    ref = batch["inputs_embeds"] if "inputs_embeds" in batch else batch["input_ids"]
    b, t = ref.shape[:2]
    real = jnp.asarray(batch.get("attention_mask", jnp.ones((b, t), jnp.int32))).astype(bool)
    if positions == "all":
        return real
    if positions == "audio":
        if audio_mask is None:
            raise ValueError("positions='audio' needs audio_mask [B, T] (True at audio tokens)")
        return jnp.asarray(audio_mask, bool) & real
    if positions == "answer":
        return jax.nn.one_hot(scoring.answer_positions(batch), t, dtype=bool)
    raise ValueError(f"unknown positions {positions!r} (choose from {POSITIONS})")


def update(stats: EmotionStats, module, params, batch: Mapping[str, Any], labels,
           label_token_ids: Sequence[Sequence[int]], config: StatsConfig = StatsConfig(), audio_mask=None,
           item_mask=None) -> tuple[EmotionStats, jnp.ndarray]:
    """One streaming step: returns (stats with this batch added, clean correctness [B] bool).

    batch: the port's forward kwargs (see :func:`esn_jax.scoring.score_labels`); labels [B] int in
    [0, E), label e scored by ``label_token_ids[e]``; audio_mask [B, T] for ``positions="audio"``;
    item_mask [B] bool marks real rows (pad the last batch to a fixed size to avoid recompiling).
    """
    if (stats.site, stats.positions) != (config.site, config.positions):
        raise ValueError(f"statistics pool {stats.site}/{stats.positions}; config asks for "
                         f"{config.site}/{config.positions}")
    stats.check_model(*model_dims(params))
    labels_t = scoring.label_tokens(label_token_ids)
    if len(labels_t) != stats.num_emotions:
        raise ValueError(f"{len(labels_t)} labels for statistics over {stats.num_emotions} emotions")
    b = np.shape(labels)[0]
    item_mask = jnp.ones((b,), bool) if item_mask is None else jnp.asarray(item_mask, bool)
    pos = position_mask(batch, config.positions, audio_mask)
    return _update(stats, module, params, dict(batch), jnp.asarray(labels, jnp.int32), labels_t, config, pos,
                   item_mask)


@functools.partial(jax.jit, static_argnames=("module", "label_token_ids", "config"))
def _update(stats, module, params, batch, labels, label_token_ids, config, pos, item_mask):
    model_kw = {k: v for k, v in batch.items() if k != "answer_positions"}
    single_token = all(len(ids) == 1 for ids in label_token_ids)
    if single_token:
        # One forward both captures the site and scores the labels.
        logits, state = module.apply({"params": params}, **model_kw,
                                     logits_positions=scoring.answer_positions(batch)[:, None],
                                     capture_intermediates=capture_filter(config.site))
        logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)
        logp = logp[:, jnp.asarray([ids[0] for ids in label_token_ids])]
    else:
        logp = scoring.score_labels(module, params, batch, label_token_ids)
        _, state = module.apply({"params": params}, **model_kw,
                                logits_positions=jnp.zeros((labels.shape[0], 1), jnp.int32),
                                capture_intermediates=capture_filter(config.site))
    acts = collect(state["intermediates"])[config.site]
    correct = jnp.argmax(logp, axis=-1) == labels
    keep = item_mask & correct if config.success_filter else item_mask
    stats = accumulate(stats, acts, labels, pos, keep)
    seen = jax.nn.one_hot(labels, stats.num_emotions, dtype=jnp.int32) * item_mask[:, None]
    return stats.replace(items_seen=stats.items_seen + seen.sum(0)), correct
