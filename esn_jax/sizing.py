"""How large a sweep fits a device, from XLA's memory analysis of the compiled program: nothing is allocated.

The bytes of a sweep are those of the program :func:`esn_jax.score_variants` runs (:func:`esn_jax.sweep.lower_sweep`)
compiled for the backend at hand, per device: every parameter of the model (held on the device whether or not the
sweep reads it: jit drops the unread ones, e.g. the audio encoder, from the program's own arguments), the embedded
batch and the edits, the outputs, the temporaries and the generated code. A compiler's choices change with size (on
an H200 XLA's temporaries grew from 119 to 173 MB per sequence above about 800 sequences), so a size is only said to
fit after the program of exactly that size was compiled; the largest fitting size is found by bisection
(:func:`largest`), bracketed first by false-position steps when the bytes are known (:func:`largest_within`).

Shapes: B = batch, T = prompt length, H = hidden, C = variant chunk (variants per vmapped call), L = layers,
I = neurons.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from esn_jax import decoding, sweep

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
    counted once) + generated code. Arguments the program does not read are not among its arguments."""
    m = lowered.compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
            + m.generated_code_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Per-device bytes of one compiled sweep, by kind."""

    arguments: int  # every parameter, the embedded batch and the edits: their shards on one device
    outputs: int  # label log-probs, and with drift the answer-position KLs (less any donated to them)
    temporaries: int  # what XLA allocates while the program runs (activations)
    code: int  # the generated code

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temporaries + self.code


def sweep_arguments(module, params, batch: int, length: int, chunk: int, site: str = "gate_act",
                    mesh=None) -> tuple[Any, dict, dict]:
    """The arguments of one :func:`esn_jax.score_variants` call as abstract arrays: (params, embedded
    {"inputs_embeds" [B, T, H] in the parameters' dtype, "attention_mask" [B, T]}, edits {site: {"scale":
    [1, C, L, I] float32}}), the batch split over the mesh's ``data`` axis where it divides it (as
    :func:`ports.sharding.shard_batch` places it) and the edits replicated."""
    decoder = getattr(module.config, "text", module.config)
    dtype = jax.tree.leaves(params)[0].dtype
    rows = replicated = None
    if mesh is not None:
        rows = NamedSharding(mesh, P("data" if batch % mesh.shape["data"] == 0 else None))
        replicated = NamedSharding(mesh, P())
    embedded = {"inputs_embeds": jax.ShapeDtypeStruct((batch, length, decoder.hidden_size), dtype, sharding=rows),
                "attention_mask": jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)}
    shape = (1, chunk, decoder.num_hidden_layers, decoder.intermediate_size)
    chunks = {site: {"scale": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=replicated)}}
    return params, embedded, chunks


def argument_bytes(tree) -> int:
    """Per-device bytes of the arrays of ``tree`` (concrete or abstract): each leaf's shard under its sharding,
    the whole leaf when it has none."""
    def shard(x):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(np.shape(x)) if sharding is not None else np.shape(x)
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize

    return sum(shard(x) for x in jax.tree.leaves(tree))


def sweep_footprint(module, params, batch: int, length: int, chunk: int, label_token_ids: Sequence[Sequence[int]],
                    site: str = "gate_act", prefix_length: int = 0, mesh=None, drift: bool = False) -> Footprint:
    """:func:`sweep_bytes` by kind (see :class:`Footprint`)."""
    args = sweep_arguments(module, params, batch, length, chunk, site, mesh)
    m = sweep.lower_sweep(module, *args, label_token_ids, prefix_length, drift=drift).compile().memory_analysis()
    return Footprint(arguments=argument_bytes(args), outputs=m.output_size_in_bytes - m.alias_size_in_bytes,
                     temporaries=m.temp_size_in_bytes, code=m.generated_code_size_in_bytes)


def sweep_bytes(module, params, batch: int, length: int, chunk: int, label_token_ids: Sequence[Sequence[int]],
                site: str = "gate_act", prefix_length: int = 0, mesh=None, drift: bool = False) -> int:
    """Per-device bytes of one :func:`esn_jax.score_variants` call: ``chunk`` variants of [L, I] edits on ``batch``
    left-padded prompts of ``length`` tokens, compiled for the devices of ``mesh`` (default: the first device).

    params: the port's parameters, concrete or abstract (``jax.ShapeDtypeStruct``, with shardings under a mesh);
    all of them count, as all of them are on the device.
    prefix_length: the prompt prefix all rows share (run once per variant); 0 plans for none, the larger program.
    drift: plan the program that also returns each variant's answer-position KL (``score_variants(..., drift=True)``).
    """
    return sweep_footprint(module, params, batch, length, chunk, label_token_ids, site, prefix_length, mesh,
                           drift).total


def generate_bytes(module, params, batch: int, length: int, chunk: int, max_new_tokens: int, site: str = "gate_act",
                   mesh=None) -> int:
    """Per-device bytes of one :func:`esn_jax.generate` call: ``chunk`` variants of [L, I] edits on ``batch``
    left-padded prompts of ``length`` tokens, ``max_new_tokens`` new tokens each (the key/value cache of every
    variant's rows holds the prompt and the answer), without a shared prompt prefix (the larger program), compiled
    for the devices of ``mesh`` (default: the first device). Stop and pad tokens do not change the program's size."""
    params, embedded, chunks = sweep_arguments(module, params, batch, length, chunk, site, mesh)
    settings = decoding.Settings(max_new_tokens=int(max_new_tokens))
    return program_bytes(decoding._generate.lower(module, params, embedded, chunks, jax.random.key(0), settings))


def largest(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in [1, upper] with ``fits(n)``, by bisection (``fits`` must be monotone: once false, false
    for every larger n); 0 when not even 1 fits. Each n is tried at most once. Whatever ``fits`` says, the
    answer n was tried and fits, and n + 1 was tried and does not fit unless n = upper."""
    fits = functools.cache(fits)
    if upper < 1 or not fits(1):
        return 0
    lo, hi = 1, upper  # fits(lo) holds; hi + 1 > upper or fits(hi + 1) was tried and failed
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def largest_within(size: Callable[[int], float], limit: float, upper: int, rounds: int = 4) -> int:
    """``largest(lambda n: size(n) <= limit, upper)`` in fewer calls of ``size`` when it is close to linear in n (a
    program's bytes in its batch): up to ``rounds`` false-position steps — the line through the nearest sizes known
    on either side of ``limit``, then its neighbour on the far side — bracket the answer, and :func:`largest`
    bisects inside the bracket. The answer carries the same guarantee; each n is tried at most once."""
    size = functools.cache(size)

    def fits(n):
        return size(n) <= limit

    if upper < 1 or not fits(1):
        return 0
    lo, hi = 1, upper + 1  # fits(lo); hi > upper or not fits(hi)
    if upper > 1:
        lo, hi = (upper, upper + 1) if fits(upper) else (1, upper)
    for _ in range(rounds):
        if hi - lo <= 1:
            break
        y_lo, y_hi = size(lo), size(hi)
        guess = lo + int((limit - y_lo) * (hi - lo) / (y_hi - y_lo)) if y_hi > y_lo else (lo + hi) // 2
        guess = min(max(guess, lo + 1), hi - 1)
        if fits(guess):
            lo = guess
            if guess + 1 < hi:
                lo, hi = (guess + 1, hi) if fits(guess + 1) else (lo, guess + 1)
        else:
            hi = guess
            if guess - 1 > lo:
                lo, hi = (guess - 1, hi) if fits(guess - 1) else (lo, guess - 1)
    return lo - 1 + largest(lambda k: fits(lo - 1 + k), hi - lo)
