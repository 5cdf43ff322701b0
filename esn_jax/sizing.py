"""How large a sweep fits a device, from XLA's memory analysis of the compiled program: nothing is allocated.

The bytes of a sweep are those of the program :func:`esn_jax.score_variants` runs (:func:`esn_jax.sweep.lower_sweep`)
compiled for the backend at hand, per device: its arguments (parameters, embedded batch, edits), outputs and
temporaries. A compiler's choices change with size (on an H200 XLA's temporaries grew from 119 to 173 MB per
sequence above about 800 sequences), so a size is only said to fit after the program of exactly that size was
compiled; the largest fitting size is found by bisection (:func:`largest`).

Shapes: B = batch, T = prompt length, H = hidden, C = variant chunk (variants per vmapped call), L = layers,
I = neurons.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from esn_jax import sweep

HEADROOM = 0.9  # the share of device memory a plan may use: the rest is the runtime's and fragmentation's


def device_memory(device=None) -> int:
    """Bytes of memory of ``device`` (default: the first device): the allocator's limit on GPUs and TPUs, the
    machine's physical memory on the CPU backend (which reports no limit)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget(memory_budget: float = 0, device=None) -> int:
    """The bytes a sweep may use per device: ``memory_budget`` when > 0, else :data:`HEADROOM` of the device's."""
    return int(memory_budget) if memory_budget > 0 else int(HEADROOM * device_memory(device))


def program_bytes(lowered: jax.stages.Lowered) -> int:
    """Per-device bytes of a lowered program once compiled: arguments + outputs + temporaries (donated arguments
    counted once) + generated code."""
    m = lowered.compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
            + m.generated_code_size_in_bytes)


def sweep_bytes(module, params, batch: int, length: int, chunk: int, label_token_ids: Sequence[Sequence[int]],
                site: str = "gate_act", prefix_length: int = 0, mesh=None) -> int:
    """Per-device bytes of one :func:`esn_jax.score_variants` call: ``chunk`` variants of [L, I] edits on ``batch``
    left-padded prompts of ``length`` tokens, compiled for the devices of ``mesh`` (default: the first device).

    params: the port's parameters, concrete or abstract (``jax.ShapeDtypeStruct``, with shardings under a mesh).
    prefix_length: the prompt prefix all rows share (run once per variant); 0 plans for none, the larger program.
    """
    hidden = _decoder(module.config).hidden_size
    layers, neurons = _decoder(module.config).num_hidden_layers, _decoder(module.config).intermediate_size
    dtype = jax.tree.leaves(params)[0].dtype
    rows = replicated = None
    if mesh is not None:
        rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    embedded = {"inputs_embeds": jax.ShapeDtypeStruct((batch, length, hidden), dtype, sharding=rows),
                "attention_mask": jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)}
    chunks = {site: {"scale": jax.ShapeDtypeStruct((1, chunk, layers, neurons), jnp.float32, sharding=replicated)}}
    return program_bytes(sweep.lower_sweep(module, params, embedded, chunks, label_token_ids, prefix_length))


def _decoder(config):
    return getattr(config, "text", config)


def largest(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in [1, upper] with ``fits(n)``, by bisection (``fits`` must be monotone: once false, false
    for every larger n); 0 when not even 1 fits. Each n is tried at most once."""
    fits = functools.cache(fits)
    if upper < 1 or not fits(1):
        return 0
    lo, hi = 1, upper  # fits(lo) holds; the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
