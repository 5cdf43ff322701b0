"""Neuron sites: the named points of every decoder MLP where a neuron is read or edited.

Vocabulary (per decoder layer ``l``; ``I`` = intermediate_size, ``L`` = num_hidden_layers)::

    gate_act  silu(gate_proj x)       [B, T, I]  the neuron activation; it "fires" when > 0
    mlp_in    gate_act * up_proj x    [B, T, I]  the input of down_proj

Interventions are data, never module state: a mapping ``{site: {"scale": a, "shift": b}}`` (either
key may be left out) whose arrays have a leading layer axis ``L`` and trailing axes that broadcast
against ``[B, T, I]`` — ``[L, I]`` edits every position alike, ``[L, B, T, I]`` edits chosen
positions. The site's value becomes ``value * scale + shift``. Both sites enter down_proj linearly,
so ``scale[l, n] = g`` equals multiplying row ``n`` of layer ``l``'s down_proj kernel by ``g``.

Captured activations come back from ``capture_intermediates`` with the same layer-major layout:
``{site: [L, B, T, I]}`` (see :func:`capture_filter` and :func:`collect`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

SITES = ("gate_act", "mlp_in")
EDITS = ("scale", "shift")
IDENTITY = {"scale": 1.0, "shift": 0.0}  # the value of each edit that leaves a site unchanged

Interventions = Mapping[str, Mapping[str, Any]]


class Site(nn.Module):
    """An identity hook point; with an edit, returns ``x * scale + shift``."""

    @nn.compact
    def __call__(self, x, edit: Mapping[str, Any] | None = None):
        if edit:
            if "scale" in edit:
                x = x * edit["scale"].astype(x.dtype)
            if "shift" in edit:
                x = x + edit["shift"].astype(x.dtype)
        return x


def map_edits(fn, interventions: Interventions) -> dict[str, dict[str, Any]]:
    """A new interventions tree with every edit array replaced by ``fn(site, kind, value)``."""
    return {site: {kind: fn(site, kind, value) for kind, value in edit.items()}
            for site, edit in interventions.items()}


def check_interventions(interventions: Interventions, num_layers: int, batch_shape: tuple[int, ...],
                        intermediate_size: int) -> None:
    """Raises a ValueError naming every site, edit or shape the decoder cannot apply."""
    problems = []
    want = (*batch_shape, intermediate_size)
    for site, edit in interventions.items():
        if site not in SITES:
            problems.append(f"unknown site {site!r} (sites: {SITES})")
            continue
        for kind, value in edit.items():
            if kind not in EDITS:
                problems.append(f"{site}: unknown edit {kind!r} (edits: {EDITS})")
                continue
            shape = tuple(np.shape(value))
            try:
                ok = len(shape) >= 1 and shape[0] == num_layers and np.broadcast_shapes(shape[1:], want) == want
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{site}.{kind} has shape {shape}; expected [L={num_layers}, ...] with the "
                                f"rest broadcasting to [B, T, I]={list(want)}")
    if problems:
        raise ValueError("bad interventions: " + "; ".join(problems))


def capture_filter(*sites: str):
    """A ``capture_intermediates`` filter that keeps exactly the named sites (all sites if none named)."""
    names = sites or SITES
    unknown = set(names) - set(SITES)
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)} (sites: {SITES})")
    return lambda module, method: method == "__call__" and isinstance(module, Site) and module.name in names


def collect(intermediates: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
    """Pulls the captured sites out of an ``intermediates`` collection: ``{site: [L, B, T, I]}``."""
    found = {}

    def walk(tree):
        for key, sub in tree.items():
            if key in SITES and "__call__" in sub:
                found[key] = sub["__call__"][0]
            elif isinstance(sub, Mapping):
                walk(sub)

    walk(intermediates)
    return found


def fold(params: Mapping[str, Any], scale) -> dict[str, Any]:
    """The weight edit equal to ``{site: {"scale": scale}}`` at either site: params with row ``n`` of layer
    ``l``'s down_proj kernel multiplied by ``scale[l, n]``. scale [L, I] (one value per neuron, every
    position alike; a ``shift`` has no weight to fold into: down_proj has no bias)."""
    scale = np.asarray(scale)

    def edit(tree, path=()):
        out = {}
        for key, sub in tree.items():
            if isinstance(sub, Mapping):
                out[key] = edit(sub, (*path, key))
            elif (*path, key)[-4:] == ("layers", "mlp", "down_proj", "kernel"):  # the decoder's, not Kimi's MIMO
                if scale.shape != tuple(np.shape(sub)[:2]):
                    raise ValueError(f"scale has shape {scale.shape}; the down_proj kernel needs [L, I] = "
                                     f"{list(np.shape(sub)[:2])}")
                out[key] = sub * scale[:, :, None].astype(sub.dtype)
            else:
                out[key] = sub
        return out

    return edit(params)
