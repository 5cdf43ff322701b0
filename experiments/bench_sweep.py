"""Micro-benchmark: masks/second of the vmapped sweep against a Python loop over masks, in one process.

Both paths score the same V ablation masks on the same batch of a tiny random Qwen2 backbone, after a
warm-up call each (compilation excluded); the loop calls one jitted ``score_labels`` per mask.

    python -m experiments.bench_sweep --variants=32 --chunk_size=32
"""

import time

import jax
import numpy as np
from absl import app, flags

import esn_jax
import ports

_VARIANTS = flags.DEFINE_integer("variants", 32, "V, masks per sweep")
_CHUNK = flags.DEFINE_integer("chunk_size", 32, "variants per vmapped step")
_BATCH = flags.DEFINE_integer("batch", 8, "items per batch")
_LENGTH = flags.DEFINE_integer("length", 32, "prompt tokens")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repetitions (the best is reported)")


def best_time(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv):
    del argv
    config = ports.DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    module = ports.Qwen2ForCausalLM(config)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (_BATCH.value, _LENGTH.value)).astype(np.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    batch = {"input_ids": ids}
    labels = ((3,), (5,), (7,), (11,))
    masks = rng.random((_VARIANTS.value, config.num_hidden_layers, config.intermediate_size)) < 0.05
    stacked = esn_jax.ablate(masks)
    singles = [esn_jax.ablate(m) for m in masks]
    score = jax.jit(esn_jax.score_labels, static_argnames=("module", "label_token_ids"))

    def vmapped():
        return esn_jax.score_variants(module, params, batch, stacked, labels, _CHUNK.value).block_until_ready()

    def loop():
        return [score(module, params, batch, labels, edits).block_until_ready() for edits in singles]

    np.testing.assert_allclose(np.asarray(vmapped()), np.stack([np.asarray(x) for x in loop()]), rtol=1e-4,
                               atol=1e-4)
    t_vmap, t_loop = best_time(vmapped, _REPEATS.value), best_time(loop, _REPEATS.value)
    v = _VARIANTS.value
    print(f"device={jax.devices()[0].platform} V={v} chunk={_CHUNK.value} B={_BATCH.value} T={_LENGTH.value} "
          f"L={config.num_hidden_layers} I={config.intermediate_size}")
    print(f"vmapped sweep: {v / t_vmap:10.1f} masks/s ({t_vmap * 1e3:.1f} ms per sweep)")
    print(f"python loop:   {v / t_loop:10.1f} masks/s ({t_loop * 1e3:.1f} ms per sweep)")
    print(f"ratio vmapped/loop: {t_loop / t_vmap:.2f}x")


if __name__ == "__main__":
    app.run(main)
