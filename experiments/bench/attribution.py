"""Gradient attribution (``attribution``, ours only): one ``esn_jax.attribution`` call (a backward pass for every
neuron's gain, per item) on C clips × T tokens of a random Qwen2 decoder of the bench's shape and dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import esn_jax
from experiments.bench import common
from experiments.bench.shapes import Shape
from experiments.bench.table import Row


def run(shape: Shape, module, params, clips: int, length: int, repeats: int) -> dict:
    """Seconds of one call on [C, T] random ids; ``finite``: whether every summed gradient is finite."""
    cfg = shape.decoder
    batch = {"input_ids": jnp.asarray(common.random_ids(cfg.vocab_size, clips, length, seed=2))}
    labels = np.arange(clips) % len(shape.labels)

    def ours():
        return jax.block_until_ready(esn_jax.attribution(module, params, batch, labels, shape.labels,
                                                         len(shape.labels)))

    grad_sum, items = ours()
    return {"seconds": common.best_time(ours, repeats), "clips": clips, "length": length,
            "finite": bool(np.isfinite(np.asarray(grad_sum, np.float32)).all()), "items": int(np.sum(items))}


def describe(r: dict) -> list[str]:
    return [f"gradient attribution, {r['clips']} × {r['length']} tokens (esn_jax.attribution, one call): "
            f"{r['seconds']:.3f} s; {r['items']} items, gradients {'finite' if r['finite'] else 'NOT finite'}"]


def rows(r: dict) -> list[Row]:
    return [Row(f"gradient attribution, {r['clips']} × {r['length']} tokens, one esn_jax.attribution call",
                f"{r['seconds']:.3f} s", "none (ours only)", "")]
