"""Identification statistics (``stats``, ours only): one ``esn_jax.update_stats`` step on C clips × T tokens of a
random Qwen2 decoder of the bench's shape and dtype, every item counted (no success filter), the ``gate_act`` site
pooled over all tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import esn_jax
from experiments.bench import common
from experiments.bench.shapes import Shape
from experiments.bench.table import Row


def run(shape: Shape, module, params, clips: int, length: int, repeats: int) -> dict:
    """Seconds of one step on [C, T] random ids, tokens per second, and the tokens the statistics pooled."""
    cfg = shape.decoder
    batch = {"input_ids": jnp.asarray(common.random_ids(cfg.vocab_size, clips, length, seed=1))}
    labels = np.arange(clips) % len(shape.labels)
    config = esn_jax.StatsConfig(success_filter=False)
    zeros = esn_jax.EmotionStats.zeros(len(shape.labels), cfg.num_hidden_layers, cfg.intermediate_size, config)

    def ours():
        return jax.block_until_ready(esn_jax.update_stats(zeros, module, params, batch, labels, shape.labels,
                                                          config)[0])

    seconds = common.best_time(ours, repeats)
    return {"seconds": seconds, "tokens": clips * length, "tokens_per_s": clips * length / seconds,
            "pooled_tokens": int(ours().tokens.sum()), "clips": clips, "length": length}


def describe(r: dict) -> list[str]:
    return [f"statistics, {r['clips']} × {r['length']} tokens (esn_jax.update_stats, one step): {r['seconds']:.3f} s "
            f"({r['tokens_per_s'] / 1e3:.1f}k tokens/s), {r['pooled_tokens']} tokens pooled"]


def rows(r: dict) -> list[Row]:
    return [Row(f"statistics, {r['clips']} × {r['length']} tokens, one esn_jax.update_stats step",
                f"{r['seconds']:.3f} s", "none (ours only)", "")]
