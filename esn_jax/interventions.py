"""Interventions as data: pure functions from neuron masks to the edit pytree the ports read.

Every function returns ``{site: {"scale": ..., "shift": ...}}`` (see :mod:`ports.sites`). A mask is
bool ``[..., L, I]``; leading axes are kept, so a mask stack ``[V, L, I]`` (or ``[E, L, I]``) gives a
stack of interventions with a leading variant axis V, ready for :func:`esn_jax.sweep.score_variants`.
Gain α scales the masked neurons by ``1 + α``: α = −1 silences them, α < −1 would flip their sign and
is refused.

Axes: E = emotions, L = layers, I = neurons, V = variants, B = batch, T = sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esn_jax.stats import EmotionStats
from ports.sites import IDENTITY, SITES, Interventions, map_edits


def _mask(mask, what: str = "mask") -> jnp.ndarray:
    arr = jnp.asarray(mask)
    if arr.ndim < 2:
        raise ValueError(f"{what} must be [..., L, I]; got shape {arr.shape}")
    if arr.dtype != bool:
        raise ValueError(f"{what} must be bool; got {arr.dtype}")
    return arr


def _site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r} (sites: {SITES})")
    return site


def _alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"alpha must be a concrete number; got {alpha!r}") from err
    if not np.isfinite(value) or value < -1:
        raise ValueError(f"alpha={value} is invalid: gain 1 + alpha must be >= 0 (alpha = -1 ablates)")
    return value


def ablate(mask, site: str = "gate_act") -> Interventions:
    """Zeroes the masked neurons: scale = 1 − mask. mask [..., L, I] -> scale [..., L, I]."""
    return {_site(site): {"scale": 1.0 - _mask(mask).astype(jnp.float32)}}


def mean_ablate(mask, stats: EmotionStats, site: str | None = None) -> Interventions:
    """Replaces the masked neurons by their mean over all identification tokens (``stats.pooled_mean``).

    mask [..., L, I] -> scale, shift [..., L, I]. The statistics must describe this site and model.
    """
    site = _site(site or stats.site)
    if site != stats.site:
        raise ValueError(f"statistics were gathered at {stats.site!r}, not {site!r}")
    m = _mask(mask)
    if m.shape[-2:] != (stats.num_layers, stats.intermediate_size):
        raise ValueError(f"mask [..., L, I] = {m.shape} does not match the statistics' model "
                         f"(L={stats.num_layers}, I={stats.intermediate_size})")
    m = m.astype(jnp.float32)
    return {site: {"scale": 1.0 - m, "shift": m * stats.pooled_mean()}}


def gain(mask, alpha: float, site: str = "gate_act") -> Interventions:
    """Scales the masked neurons by 1 + α. mask [..., L, I] -> scale [..., L, I]."""
    return {_site(site): {"scale": 1.0 + _alpha(alpha) * _mask(mask).astype(jnp.float32)}}


def add_vector(mask, vector, factor: float, site: str = "gate_act") -> Interventions:
    """Adds ``factor`` × ``vector`` to the masked neurons (a steering vector, e.g. DiffMean: one emotion's mean
    activation minus the others'). mask [..., L, I], vector [..., L, I] (broadcast) -> scale, shift [..., L, I]."""
    m = _mask(mask)
    v = jnp.asarray(vector, jnp.float32)
    if v.shape[-2:] != m.shape[-2:]:
        raise ValueError(f"vector [..., L, I] = {v.shape} does not match the mask's {m.shape}")
    try:
        value = float(factor)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"factor must be a concrete number; got {factor!r}") from err
    shift = value * jnp.where(m, v, 0.0)
    return {_site(site): {"scale": jnp.ones(shift.shape, jnp.float32), "shift": shift}}


def union(masks, alpha: float, site: str = "gate_act") -> Interventions:
    """Label-free Union: gain α on every neuron any emotion selected. masks [E, L, I] -> scale [L, I]."""
    return gain(_mask(masks, "masks").any(axis=-3), alpha, site)


def mix(masks, weights: Sequence[float], alpha: float, site: str = "gate_act") -> Interventions:
    """Label-free Mix: scale = 1 + α Σ_e w_e mask_e. masks [E, L, I], weights [E] (≥ 0, sum ≤ 1) -> [L, I].

    The weight bounds keep every neuron's gain between 1 and 1 + α, as for a single mask.
    """
    m = _mask(masks, "masks")
    w = np.asarray(weights, np.float64)
    if w.shape != (m.shape[-3],):
        raise ValueError(f"weights must be [E={m.shape[-3]}]; got shape {w.shape}")
    if (w < 0).any() or w.sum() > 1 + 1e-6:
        raise ValueError(f"weights must be >= 0 and sum to at most 1; got {w.tolist()}")
    combined = jnp.einsum("e,...eli->...li", jnp.asarray(w, jnp.float32), m.astype(jnp.float32))
    return {_site(site): {"scale": 1.0 + _alpha(alpha) * combined}}


def two_pass(masks, predictions, alpha: float, site: str = "gate_act") -> Interventions:
    """Label-free 2-Pass: each item gets the mask of the emotion the clean model predicted for it.

    masks [E, L, I]; predictions [B] int (clean argmax) -> scale [L, B, 1, I] (every position).
    """
    m = _mask(masks, "masks")
    if m.ndim != 3:
        raise ValueError(f"masks must be [E, L, I]; got shape {m.shape}")
    chosen = m[jnp.asarray(predictions)].astype(jnp.float32)  # [B, L, I]
    return {_site(site): {"scale": 1.0 + _alpha(alpha) * jnp.transpose(chosen, (1, 0, 2))[:, :, None, :]}}


def at_positions(interventions: Interventions, positions) -> Interventions:
    """Restricts an intervention's edits to chosen positions (e.g. audio tokens), the identity elsewhere.

    positions [B, T] bool. Each edit [L, I] or [L, B|1, T|1, I] becomes [L, B, T, I]. For a stack
    with a variant axis use ``jax.vmap(at_positions, in_axes=(0, None))``.
    """
    pos = jnp.asarray(positions, bool)
    if pos.ndim != 2:
        raise ValueError(f"positions must be [B, T] bool; got shape {pos.shape}")

    def widen(site, kind, value):
        value = jnp.asarray(value)
        if value.ndim == 2:
            value = value[:, None, None, :]
        elif value.ndim != 4:
            raise ValueError(f"{site}.{kind} has shape {value.shape}; expected [L, I] or [L, B, T, I]")
        return jnp.where(pos[None, :, :, None], value, IDENTITY[kind])

    return map_edits(widen, interventions)


def stack(interventions: Sequence[Interventions]) -> Interventions:
    """Stacks same-structured interventions along a new leading variant axis V (broadcasting shapes)."""
    if not interventions:
        raise ValueError("nothing to stack")
    structure = jax.tree.structure(interventions[0])
    for i, item in enumerate(interventions):
        if jax.tree.structure(item) != structure:
            raise ValueError(f"intervention {i} has structure {jax.tree.structure(item)}, expected {structure}")

    def stack_leaves(*leaves):
        shape = np.broadcast_shapes(*(np.shape(x) for x in leaves))
        return jnp.stack([jnp.broadcast_to(x, shape) for x in leaves])

    return jax.tree.map(stack_leaves, *interventions)
