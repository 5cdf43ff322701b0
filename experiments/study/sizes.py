"""How large the study's compiled calls are: the variant chunk of every sweep and, with ``batch_size=auto``, the
batch, chosen per device from XLA's memory analysis of the compiled programs (:mod:`esn_jax.sizing`: compile-only,
nothing is allocated) under ``memory_budget`` (bytes per device; 0: :data:`esn_jax.sizing.HEADROOM` of the
device's memory; on the CPU backend, of the machine's divided among the mesh's devices on it, over every process
there), and guarded while the study runs.

- ``variant_chunk=auto`` (the default): per call shape (program, B rows, T tokens, V variants) the largest chunk
  C ≤ V whose program fits the budget (V first: one compile when everything fits, else a bisection), then evened
  out to ⌈V / ⌈V / C⌉⌉ (as few calls, less padding in the last), chosen once per shape and logged. V is the cap: a
  larger chunk would only score padding.
- An explicit ``variant_chunk`` and ``auto`` go through the same guard: before the first call of a shape, a chunk
  whose compiled program exceeds the budget is halved (until it fits; not even C = 1: a ValueError naming the
  budget and that program's bytes), and a call that still runs out of device memory (a ``JaxRuntimeError`` whose
  message says RESOURCE_EXHAUSTED) halves the chunk and goes on at the first variant not yet done: the outputs of
  the calls before it are kept, none is computed twice, and every variant's output is the one a run with the
  smaller chunk from the start gives it.
- ``batch_size=auto``: the largest batch ≤ min(256, the most items of a split the study reads) whose sweep of one
  variant fits, and its generation of one variant (the longest answer the study writes), at the prompt length of
  the longest bucket the items fall in (:func:`prompt_length`: a batch of one clip of that bucket built as the
  study builds its batches, under every prompt variant). It is chosen once, before
  any batch is written, and kept in the run directory, so that a resumed run writes the rest of its batches at
  the same size (on another device too: the config hash keeps ``auto``, not the number).

The programs sized are the sweep :func:`esn_jax.score_variants` runs (planned without a shared prompt prefix,
:func:`esn_jax.sizing.sweep_bytes`'s larger program), the plain-text loss of :func:`esn_jax.text_loss` (the
collateral stage and the plain-text damage of the steering evaluation) and generation (:func:`esn_jax.generate`, of
the free-form answers: :func:`esn_jax.sizing.generate_bytes`, whose key/value cache grows with the variants, rows,
prompt and answer). Under a mesh every analysis is per device of the mesh (parameters with their shardings,
rows split over ``data``). The choices go to results.json's ``sizing`` block.

Shapes: B = batch, T = prompt length, V = variants of a call, C = chunk (variants per compiled call), L = layers,
I = neurons.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.study import parse_list, size
from esn_jax import collateral, sizing
from esn_jax.data import pipeline
from esn_jax.stats import model_dims
from experiments import hosts
from experiments.study import adapters
from ports import sharding

BATCH_CAP = 256  # batch_size=auto looks no further: past it a sweep gains little, a short split nothing
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"  # how XLA's runtime says a device ran out of memory


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, jax.errors.JaxRuntimeError) and OUT_OF_MEMORY in str(err)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape of a chunked call: ``program`` ("score", "generate" or "collateral") on ``batch`` rows of
    ``length`` tokens, ``variants`` interventions in all; ``tokens``: the new tokens of a "generate" call."""

    program: str
    batch: int
    length: int
    variants: int
    tokens: int = 0

    @property
    def key(self) -> str:
        return f"{self.program} {self.batch}x{self.length}{f'+{self.tokens}' if self.tokens else ''} V{self.variants}"


def abstract(params, mesh=None):
    """The parameters as ``jax.ShapeDtypeStruct`` leaves, with their shardings under a mesh: what the analyses
    compile for, without touching the arrays."""
    def leaf(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=x.sharding if mesh is not None else None)
    return jax.tree.map(leaf, params)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


class Sizer:
    """The variant chunk of every call shape, chosen and guarded under one budget (module docstring).

    record: what an earlier process of the same run chose (the run directory's ``sizing.json``), kept and added
    to; save: called with the record after every change, so that a resumed run reports every choice.
    """

    def __init__(self, model: adapters.Model, variant_chunk, memory_budget: int = 0, site: str = "gate_act",
                 mesh=None, record: dict | None = None, save: Callable[[dict], None] | None = None):
        self.module, self.label_token_ids, self.site, self.mesh = model.module, model.label_token_ids, site, mesh
        self.params = abstract(model.params, mesh)
        self.layers, self.neurons = model_dims(model.params)
        self.device = sharding.local_device(mesh) if mesh is not None else jax.devices()[0]
        self.budget = sizing.budget(memory_budget, self.device)
        if memory_budget <= 0 and self.device.platform == "cpu":  # its devices (and processes) share the memory
            self.budget //= hosts.machine_devices(mesh)
        self.requested = size(variant_chunk, "variant_chunk")  # None: auto
        self.data = mesh.shape["data"] if mesh is not None else 1
        self.record = {"programs": {}, **(record or {})}
        self._save = save
        self._bytes: dict[tuple, int] = {}
        self._chunks: dict[Shape, int] = {}

    # ------------------------------------------------------------ analyses

    def bytes(self, shape: Shape, chunk: int) -> int:
        """Per-device bytes of ``shape``'s program at ``chunk`` variants per call (compiled once, then cached)."""
        kind = shape.program if shape.program in ("collateral", "generate") else "sweep"
        key = (kind, shape.batch, shape.length, shape.tokens, chunk)
        if key not in self._bytes:
            if kind == "sweep":
                self._bytes[key] = sizing.sweep_bytes(self.module, self.params, shape.batch, shape.length, chunk,
                                                      self.label_token_ids, self.site, 0, self.mesh, drift=True)
            elif kind == "generate":
                self._bytes[key] = sizing.generate_bytes(self.module, self.params, shape.batch, shape.length, chunk,
                                                         shape.tokens, self.site, self.mesh)
            else:
                self._bytes[key] = self._text_loss_bytes(shape.batch, shape.length, chunk)
        return self._bytes[key]

    def _text_loss_bytes(self, batch: int, length: int, chunk: int) -> int:
        """:func:`esn_jax.text_loss`'s program on [B, T] text rows, ``chunk`` variants per call."""
        rows = edits = None
        if self.mesh is not None:  # rows split over data where it divides them, as ports.sharding.shard_batch does
            rows = NamedSharding(self.mesh, P("data" if batch % self.data == 0 else None))
            edits = NamedSharding(self.mesh, P())
        text = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)
        chunks = {self.site: {"scale": jax.ShapeDtypeStruct((1, chunk, self.layers, self.neurons), jnp.float32,
                                                            sharding=edits)}}
        return sizing.program_bytes(collateral._loss.lower(self.module, self.params, text, text, chunks))

    def fits(self, shape: Shape, chunk: int) -> bool:
        return self.bytes(shape, chunk) <= self.budget

    def _too_small(self, shape: Shape) -> ValueError:
        what = "sweep" if shape.program == "score" else shape.program
        return ValueError(f"memory_budget={self.budget} bytes per device is smaller than the smallest {what} "
                          f"program (1 variant × {shape.batch} × {shape.length}): {self.bytes(shape, 1)} bytes")

    # ------------------------------------------------------------ chunks

    def chunk(self, shape: Shape) -> int:
        """The chunk for ``shape``: chosen (auto) or the config's, capped at V, then halved until its program fits
        the budget; chosen once per shape, logged and recorded."""
        if shape in self._chunks:
            return self._chunks[shape]
        v = shape.variants
        if self.requested is None:
            # V first: when everything fits (CPU runs, small models) that is the only compile.
            chunk = v if self.fits(shape, v) else sizing.largest(lambda c: self.fits(shape, c), v)
            if chunk == 0:
                raise self._too_small(shape)
            # As few calls as the largest chunk needs, split evenly: the last call pads less (145 variants at most
            # 111 per call: 2 calls of 73, not 2 of 111).
            chunk = -(-v // -(-v // chunk))
        else:
            chunk = min(self.requested, v)
        entry = {"program": shape.program, "batch": shape.batch, "length": shape.length, "variants": v,
                 "requested": "auto" if self.requested is None else self.requested, "halved": [],
                 **({"new_tokens": shape.tokens} if shape.tokens else {})}
        self.record["programs"][shape.key] = entry
        chunk = self._fit(shape, chunk)
        logging.info("variant_chunk=%s: %s on %d rows × %d tokens, %d variants: %d per call, %s per device "
                     "(budget %s)", entry["requested"], shape.program, shape.batch, shape.length, v, chunk,
                     _gb(self.bytes(shape, chunk)), _gb(self.budget))
        return chunk

    def _fit(self, shape: Shape, chunk: int) -> int:
        """Halves ``chunk`` until ``shape``'s program at that chunk fits the budget (the guard before a chunk's
        first call); sets and records it."""
        while not self.fits(shape, chunk):
            if chunk == 1:
                raise self._too_small(shape)
            chunk = self._halve(shape, chunk, f"{self.bytes(shape, chunk)} bytes per device > the budget "
                                              f"{self.budget}")
        entry = self.record["programs"][shape.key]
        entry.update(chunk=chunk, bytes=self.bytes(shape, chunk))
        self._chunks[shape] = chunk
        self.save()
        return chunk

    def save(self) -> None:
        if self._save is not None:
            self._save(self.record)

    def _halve(self, shape: Shape, chunk: int, why: str) -> int:
        logging.warning("%s on %d rows × %d tokens, %d variants: %d variants per call do not fit (%s); halved to %d",
                        shape.program, shape.batch, shape.length, shape.variants, chunk, why, chunk // 2)
        self.record["programs"][shape.key]["halved"].append({"from": chunk, "to": chunk // 2, "why": why})
        return chunk // 2

    def run(self, shape: Shape, interventions, call: Callable[[Any], Any]):
        """``call(part)`` on consecutive chunks of V stacked ``interventions`` (the last one padded with copies of
        its last variant, so that one compiled shape serves every call) -> its outputs (numpy arrays with a leading
        variant axis, or a tuple of them) for all V variants, concatenated.

        A call that runs out of device memory halves the chunk (then the guard of :meth:`_fit`) and the loop goes
        on at the first variant not yet done; at one variant per call it is raised, with a note."""
        v, start, out = shape.variants, 0, []
        chunk = self.chunk(shape)
        while start < v:
            n = min(chunk, v - start)
            part = jax.tree.map(lambda x, s=start, n=n, c=chunk: _padded(x[s:s + n], c), interventions)
            try:
                got = call(part)
            except jax.errors.JaxRuntimeError as err:
                if not out_of_memory(err):
                    raise
                if chunk == 1:
                    err.add_note(f"{shape.key}: out of device memory at one variant per call: lower memory_budget "
                                 f"(now {self.budget} bytes) or batch_size")
                    raise
                chunk = self._fit(shape, self._halve(shape, chunk, f"out of memory at variant {start}"))
                continue
            out.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], got))
            start += n
        return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

    # ------------------------------------------------------------ batch size

    def batch_size(self, length: int, cap: int, new_tokens: int = 0) -> int:
        """The largest batch ≤ ``cap`` (a multiple of the mesh's data axis) whose sweep of one variant on prompts of
        ``length`` tokens fits the budget, and with ``new_tokens`` > 0 its generation of that many tokens too."""
        def shapes(n):
            return [Shape("score", n * self.data, length, 1)] + (
                [Shape("generate", n * self.data, length, 1, new_tokens)] if new_tokens else [])

        def fits(n):
            return all(self.fits(shape, 1) for shape in shapes(n))

        upper = max(1, cap // self.data)
        n = upper if fits(upper) else sizing.largest(fits, upper)
        if n == 0:
            raise self._too_small(next(s for s in shapes(1) if not self.fits(s, 1)))
        return n * self.data

    def summary(self) -> dict:
        """results.json's ``sizing`` block: where it ran, the budget, the batch size and every shape's chunk (keys
        sorted, as the record a resumed run reads back from ``sizing.json``)."""
        return json.loads(json.dumps(self._summary(), sort_keys=True))

    def _summary(self) -> dict:
        return {"backend": self.device.platform, "device": self.device.device_kind,
                "devices": int(self.mesh.devices.size) if self.mesh is not None else 1,
                "processes": jax.process_count(), "budget_bytes": self.budget,
                "variant_chunk": "auto" if self.requested is None else self.requested,
                **{k: v for k, v in self.record.items() if k != "programs"},
                "programs": [self.record["programs"][k] for k in sorted(self.record["programs"])]}


def _padded(x, chunk: int):
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[-1:], chunk - len(x), 0)]) if len(x) < chunk else x


def prompt_length(model: adapters.Model, examples: Sequence[pipeline.Example], questions: Sequence[str], cfg) -> int:
    """T of the study's batches in the longest bucket ``examples`` fall in, the longest over ``questions`` (the
    prompt variants): one batch of one clip of that bucket, built as :func:`adapters.batches` builds them."""
    buckets = parse_list("buckets", cfg.buckets)
    longest = max(examples, key=lambda ex: pipeline.bucket_of(ex.wave.size, buckets) or buckets[-1])
    one = with_batch_size(cfg, 1)
    return max(next(adapters.batches(dataclasses.replace(model, question=q), [longest], one))["input_ids"].shape[1]
               for q in questions)


def with_batch_size(cfg, batch_size: int):
    """A copy of ``cfg`` with ``batch_size`` resolved (the original, with "auto", names the run directory)."""
    return type(cfg)(dict(cfg.to_dict(), batch_size=batch_size))
