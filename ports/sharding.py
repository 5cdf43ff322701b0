"""Device meshes and sharding rules for every port's parameters, batches and variant stacks.

Mesh axes (one vocabulary for all scripts)::

    variants  the leading V axis of stacked interventions in a mask sweep
    data      the batch axis B of inputs (and of captured activations)
    model     tensor parallelism: attention heads, MLP neurons (I), vocabulary, encoder widths

Parameters are placed by one table of rules (a regex over the '/'-joined parameter path -> how to
split its trailing axes). The projections that widen the
hidden state (q/k/v, gate/up, fc1, projector inputs) split their output features over ``model``;
those that narrow it (o_proj, down_proj, out_proj, fc2) split their input features, so each MLP
needs one all-reduce (Megatron layout). Everything else is replicated. A dimension that the mesh
axis does not divide is left unsplit, so the same rules serve tiny test models and 7B ones.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("variants", "data", "model")

# Name groups of the projections (decoder, audio encoders, projectors, Kimi's vq_adaptor).
_WIDEN = r"(q_proj|k_proj|v_proj|gate_proj|up_proj|fc1|linear_1|proj|conv1|conv2|layers_0)"
_NARROW = r"(o_proj|down_proj|out_proj|fc2|linear_2|layers_3)"
# Regex over the path -> the spec of the parameter's trailing axes; leading axes (the stacked layer
# axis, convolution taps) stay unsplit.
RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (rf"(^|/){_WIDEN}/kernel$", (None, "model")),
    (rf"(^|/){_WIDEN}/bias$", ("model",)),
    (rf"(^|/){_NARROW}/kernel$", ("model", None)),
    (r"(^|/)embed_tokens/embedding$", ("model", None)),
    (r"(^|/)(lm_head|mimo_output)/kernel$", (None, "model")),
)

def make_mesh(data: int = 1, model: int = 1, variants: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("variants", "data", "model") mesh over the first variants·data·model devices."""
    devices = list(jax.devices() if devices is None else devices)
    need = variants * data * model
    if need > len(devices) or min(variants, data, model) < 1:
        raise ValueError(f"mesh variants={variants} × data={data} × model={model} needs {need} devices; "
                         f"{len(devices)} available")
    return Mesh(np.array(devices[:need]).reshape(variants, data, model), AXES)


def local_device(mesh: Mesh) -> Any:
    """The mesh's first device that this process addresses (in a multi-host run the first device of the mesh may be
    another host's, whose memory this process cannot query)."""
    return next(d for d in mesh.devices.flat if d.process_index == jax.process_index())


def parse_mesh(spec: str) -> dict[str, int]:
    """``"data:4,model:2"`` -> ``{"data": 4, "model": 2}`` (the scripts' ``--mesh`` flag); "" -> {}."""
    out = {}
    for part in filter(None, spec.split(",")):
        name, _, size = part.partition(":")
        if name not in AXES or not size.isdigit() or int(size) < 1:
            raise ValueError(f"bad mesh entry {part!r} in {spec!r}; expected AXIS:SIZE with AXIS in {AXES}")
        out[name] = int(size)
    return out


def spec_for(path: str, shape: Sequence[int], mesh: Mesh) -> P:
    """The PartitionSpec the rules give a parameter, with axes the mesh cannot divide left unsplit."""
    for pattern, trailing in RULES:
        if re.search(pattern, path) and len(trailing) <= len(shape):
            spec = (None,) * (len(shape) - len(trailing)) + trailing
            return P(*(axis if axis is None or dim % mesh.shape[axis] == 0 else None
                       for axis, dim in zip(spec, shape, strict=True)))
    return P()


def param_shardings(params: Mapping[str, Any], mesh: Mesh) -> Any:
    """A tree of NamedShardings matching ``params`` (arrays or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({
        k: NamedSharding(mesh, spec_for("/".join(k), np.shape(v), mesh)) for k, v in flat.items()})


def shard_params(params: Mapping[str, Any], mesh: Mesh) -> Any:
    return jax.device_put(params, param_shardings(params, mesh))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Splits every input's leading batch axis over ``data`` (replicated where ``data`` does not divide it)."""
    def put(x):
        x = np.asarray(x)
        axis = "data" if x.ndim and x.shape[0] % mesh.shape["data"] == 0 else None
        return jax.device_put(x, NamedSharding(mesh, P(axis)))

    return {k: put(v) for k, v in batch.items()}


def process_rows(mesh: Mesh, batch: int) -> slice:
    """The rows of a [B, ...] batch split over ``data`` that this process's devices hold (all of them with one
    process): in a multi-host run each host builds and feeds only those (:func:`shard_process_rows`)."""
    if jax.process_count() == 1:
        return slice(0, batch)
    held = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch,)).values()
    spans = sorted({index[0].indices(batch)[:2] for index in held})
    if any(a[1] != b[0] for a, b in itertools.pairwise(spans)):
        raise ValueError(f"this process holds rows {spans} of the batch, not one run of rows: order the mesh's "
                         "devices by process along 'data'")
    return slice(spans[0][0], spans[-1][1])


def shard_process_rows(batch: Mapping[str, Any], mesh: Mesh, rows: slice, size: int) -> dict[str, Any]:
    """Global arrays over ``data`` from this process's ``rows`` of a batch of ``size`` rows (:func:`process_rows`);
    an input with k entries per row (e.g. one per 30-s window) holds k · len(rows) of them."""
    def put(x):
        x = np.asarray(x)
        per_row, rest = divmod(x.shape[0], rows.stop - rows.start)
        if rest:
            raise ValueError(f"an input of {x.shape[0]} entries for {rows.stop - rows.start} rows: not whole rows")
        return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x,
                                                      (size * per_row, *x.shape[1:]))

    return {k: put(v) for k, v in batch.items()}


def shard_variants(interventions: Any, mesh: Mesh) -> Any:
    """Splits a stacked intervention tree's leading variant axis V over ``variants``."""
    def put(x):
        axis = "variants" if np.shape(x)[0] % mesh.shape["variants"] == 0 else None
        return jax.device_put(x, NamedSharding(mesh, P(axis)))

    return jax.tree.map(put, interventions)


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes the largest shard of every leaf occupies on one device, summed over the tree."""
    def shard_bytes(x, sharding):
        return int(np.prod(sharding.shard_shape(np.shape(x)), dtype=np.int64)) * np.dtype(x.dtype).itemsize

    return sum(jax.tree.leaves(jax.tree.map(shard_bytes, tree, shardings)))
