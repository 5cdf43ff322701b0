"""Statistics capture memory (``memory``): the peak resident-memory growth of collecting identification statistics
for C clips on a random Qwen2.5-0.5B-shaped decoder (float32, CPU memory): streamed (``esn_jax.update_stats``)
against a full activation cache (forward hooks storing gate_act, as TransformerLens-style tooling does), at each
clip count, each in a fresh process (``python -m experiments.bench --probe=...``), after one warm-up batch
(compilation and first-touch of the weights are not capture memory). The probes run on the CPU, also on a machine
with an accelerator: resident memory is what they measure."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import threading

import jax
import numpy as np

import esn_jax
from experiments.bench import common
from experiments.bench.shapes import LABELS, QWEN2_5_0_5B
from experiments.bench.table import Row

BATCH = 4  # clips per capture step


class PeakGrowth:
    """Samples this process's resident memory every millisecond; ``bytes`` = peak minus the level at entry.

    (``ru_maxrss`` cannot serve: model setup already set a higher peak than a small capture reaches.)
    """

    def __enter__(self):
        gc.collect()
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.bytes = self.peak - self.start


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def probe(kind: str, clips: int, length: int) -> None:
    """One memory measurement in this fresh process: prints JSON with the peak RSS growth in bytes."""
    cfg = QWEN2_5_0_5B
    ids = common.random_ids(cfg.vocab_size, clips, length, seed=1)
    if kind == "streaming":
        module, params = common.random_model(cfg)
        labels = np.arange(clips) % len(LABELS)
        config = esn_jax.StatsConfig(success_filter=False)
        stats = esn_jax.EmotionStats.zeros(len(LABELS), cfg.num_hidden_layers, cfg.intermediate_size, config)
        warm, _ = esn_jax.update_stats(stats, module, params, {"input_ids": ids[:BATCH]}, labels[:BATCH], LABELS,
                                       config)  # compiles, and touches every page the weights use
        jax.block_until_ready(warm)
        with PeakGrowth() as growth:
            for start in range(0, clips, BATCH):
                part = slice(start, start + BATCH)
                stats, _ = esn_jax.update_stats(stats, module, params, {"input_ids": ids[part]}, labels[part],
                                                LABELS, config)
            jax.block_until_ready(stats)
    else:
        import torch

        model = common.torch_random("qwen2", cfg).cpu()  # the cache lives in CPU memory, where RSS sees it
        cache = []
        for layer in model.model.layers:
            layer.mlp.act_fn.register_forward_hook(lambda _m, _a, out: cache.append(out.detach().clone()))
        with torch.inference_mode():
            model(input_ids=torch.as_tensor(ids[:BATCH], dtype=torch.long), logits_to_keep=1)  # as the warm-up
            cache.clear()
            with PeakGrowth() as growth:
                for start in range(0, clips, BATCH):
                    model(input_ids=torch.as_tensor(ids[start:start + BATCH], dtype=torch.long), logits_to_keep=1)
    print(json.dumps({"kind": kind, "clips": clips, "peak_growth_bytes": growth.bytes}))


def measure(clip_counts, length: int) -> dict:
    """{(kind, clips): peak growth bytes} for kind in streaming, cache, each from a fresh process."""
    out = {}
    for clips in clip_counts:
        for kind in ("streaming", "cache"):
            run = subprocess.run([sys.executable, "-m", "experiments.bench", f"--probe={kind}", f"--length={length}",
                                  f"--memory_clips={clips}"], capture_output=True, text=True, check=True,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""})
            out[(kind, clips)] = json.loads(run.stdout.strip().splitlines()[-1])["peak_growth_bytes"]
    return out


def describe(mem: dict, clip_counts, length: int) -> list[str]:
    return [f"statistics capture, peak RSS growth (T={length}):"] + [
        f"  {clips:4d} clips: streamed {mem[('streaming', clips)] / 2**20:8.1f} MiB, "
        f"full cache {mem[('cache', clips)] / 2**20:8.1f} MiB" for clips in clip_counts]


def rows(mem: dict, clip_counts, length: int) -> list[Row]:
    largest = max(clip_counts)
    return [Row(f"statistics capture, peak RSS growth, {clips} clips × {length} tokens",
                f"{mem[('streaming', clips)] / 2**20:.1f} MiB", "naive: a full activation cache, then statistics",
                f"{mem[('cache', clips)] / 2**20:.1f} MiB", "capture_memory_ratio" if clips == largest else None)
            for clips in clip_counts]
