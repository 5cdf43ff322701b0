"""Sweep vs loop (issue 4's micro-benchmark): masks per second of our vmapped sweep against a Python loop of our own
jitted scoring, one mask at a time, on a tiny random Qwen2 backbone (float32)."""

from __future__ import annotations

import jax
import numpy as np

import esn_jax
import ports
from experiments.bench import common
from experiments.bench.table import Row


def run(repeats: int, variants: int = 32) -> tuple[float, float]:
    """Masks per second: (vmapped sweep, Python loop over masks); the two are checked to score alike."""
    cfg = ports.DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    module, params = common.random_model(cfg)
    batch = {"input_ids": common.random_ids(cfg.vocab_size, 8, 32)}
    labels = ((3,), (5,), (7,), (11,))
    masks = np.random.default_rng(1).random((variants, cfg.num_hidden_layers, cfg.intermediate_size)) < 0.05
    stacked, singles = esn_jax.ablate(masks), [esn_jax.ablate(m) for m in masks]
    score = jax.jit(esn_jax.score_labels, static_argnames=("module", "label_token_ids"))

    def vmapped():
        return esn_jax.score_variants(module, params, batch, stacked, labels).block_until_ready()

    def loop():
        return [score(module, params, batch, labels, edits).block_until_ready() for edits in singles]

    np.testing.assert_allclose(vmapped(), np.stack(loop()), rtol=1e-4, atol=1e-4)
    return variants / common.best_time(vmapped, repeats), variants / common.best_time(loop, repeats)


def describe(sweep: float, loop: float, variants: int = 32) -> list[str]:
    return [f"tiny model, {variants} masks: vmapped sweep {sweep:.0f} masks/s, Python loop {loop:.0f} masks/s "
            f"({sweep / loop:.2f}x)"]


def rows(sweep: float, loop: float, variants: int = 32) -> list[Row]:
    return [Row(f"sweep, tiny model, {variants} masks (masks/s)", f"{sweep:.0f} masks/s",
                "none: a Python loop of our own jitted scoring, mask by mask", f"{loop:.0f} masks/s", "ratio_sweep")]
