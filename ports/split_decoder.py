"""The shared decoder's forward split where the edits begin: what no edit changes runs once, the rest once per edit.

An edit at a neuron site of layer ``c`` (:mod:`ports.sites`) changes nothing that layer ``c`` computes before its
MLP activation. :func:`below` runs that part once: layers ``0 .. c-1``, then layer ``c``'s attention and its gate
and up projections. :func:`above` runs the rest under one edit: layer ``c``'s sites and down_proj, the layers after
it and, since only some positions' logits are read, the last layer's queries, attention output and MLP at those
positions only (its keys and values at every position). A prompt prefix all rows share (:mod:`esn_jax.prefix`)
runs beside them as one row whose keys and values every row attends to, layer by layer; of the last layer it needs
only its keys and values.

Both take the decoder's own forward inputs (``inputs_embeds``, ``attention_mask`` [B, T] or [B, T, T],
``position_ids``) and return what :meth:`ports.decoder.Qwen2ForCausalLM.logits` turns into logits.

Shapes: B = batch, T = tokens, H = hidden, I = neurons, P = shared prefix, S = read positions, L = layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ports.decoder import DecoderLayer, at_positions, attention_inputs
from ports.sites import Interventions


def below(module, params, inputs: Mapping[str, Any], head: Mapping[str, Any] | None, cut: int, positions) -> dict:
    """The part of the forward no edit at layers >= ``cut`` changes.

    module, params: the decoder with its head (:func:`ports.decoder.language_model`).
    inputs: the rows' forward kwargs [B, T]; head: the shared prefix's {"inputs_embeds" [1, P, H], optional
    "position_ids" [1, P]}, or None; positions [B, S]: the positions whose logits will be read.
    Returns the state :func:`above` continues from.
    """
    cfg, layers = module.config, params["model"]["layers"]
    rows = _stream(module, inputs, None if head is None else head["inputs_embeds"].shape[1])
    shared = None if head is None else _stream(module, head, None)
    rows["h"], h_head = _layers(module, layers, 0, cut, rows, shared, {})
    layer = _slice(layers, cut)
    last = cut == cfg.num_hidden_layers - 1
    kv = None
    if shared is not None:
        if last:
            kv = _kv(module, layer, h_head, shared)
        else:
            (shared["h"], kv) = _attend(module, layer, h_head, shared, None, None)
            shared["mlp"] = _call(module, layer, "mlp_inputs", shared["h"])
    rows["h"], _ = _attend(module, layer, rows["h"], rows, kv, positions if last else None)
    rows["mlp"] = _call(module, layer, "mlp_inputs", rows["h"])
    return {"rows": rows, "head": shared}


def above(module, params, state: dict, interventions: Interventions, cut: int, positions):
    """The rest of the forward under ``interventions`` (edits [L, ...] of every layer; those below ``cut`` must be
    the identity): the last layer's output at ``positions`` [B, S] -> [B, S, H], before the final norm."""
    cfg, layers = module.config, params["model"]["layers"]
    last_index = cfg.num_hidden_layers - 1
    rows, shared = dict(state["rows"]), None if state["head"] is None else dict(state["head"])
    layer = _slice(layers, cut)
    if cut == last_index:
        return _call(module, layer, "mlp_outputs", rows["h"], *rows["mlp"], _edits_at(interventions, cut, positions))
    edits = _slice(interventions, cut)
    rows["h"] = _call(module, layer, "mlp_outputs", rows["h"], *rows["mlp"], edits)
    h_head = None if shared is None else _call(module, layer, "mlp_outputs", shared["h"], *shared["mlp"], edits)
    rows["h"], h_head = _layers(module, layers, cut + 1, last_index, rows, shared and {**shared, "h": h_head},
                                interventions)
    layer = _slice(layers, last_index)
    kv = None if shared is None else _kv(module, layer, h_head, shared)
    h, _ = _attend(module, layer, rows["h"], rows, kv, positions)
    gate, up = _call(module, layer, "mlp_inputs", h)
    return _call(module, layer, "mlp_outputs", h, gate, up, _edits_at(interventions, last_index, positions))


def _stream(module, inputs: Mapping[str, Any], prefix_length: int | None) -> dict:
    """The hidden states and attention inputs of rows that see ``prefix_length`` shared slots (None: none)."""
    h = inputs["inputs_embeds"].astype(module.dtype)
    seen = None if prefix_length is None else jnp.ones((1, prefix_length), bool)
    cos, sin, mask = attention_inputs(module.config, module.dtype, h.shape[:2], inputs.get("attention_mask"),
                                      inputs.get("position_ids"), seen)
    return {"h": h, "cos": cos, "sin": sin, "mask": mask}


def _call(module, layer_params, method: str, *args, **kwargs):
    return DecoderLayer(module.config, module.dtype).apply({"params": layer_params}, *args, method=method, **kwargs)


def _attend(module, layer_params, h, stream: dict, prefix, at):
    """One layer's attention on ``h`` -> (residual stream after it, its keys and values {"key", "value"})."""
    out, state = _call(module, layer_params, "attend", h, stream["cos"], stream["sin"], stream["mask"], prefix, at,
                       mutable=["cache"])
    return out, dict(state["cache"]["self_attn"])


def _kv(module, layer_params, h, stream: dict) -> dict:
    key, value = _call(module, layer_params, "keys_values", h, stream["cos"], stream["sin"])
    return {"key": key, "value": value}


def _layers(module, layers, lo: int, hi: int, rows: dict, shared: dict | None, interventions: Interventions):
    """Whole layers lo .. hi-1 (of the stacked parameters and edits [L, ...]) on the rows and the shared prefix ->
    both. Each step reads its layer out of the stack: slicing the stack first would copy those layers' weights."""

    def one(carry, index):
        h, h_head = carry
        p, edits = _slice((layers, interventions), index)
        kv = None
        if shared is not None:
            (h_head, _), state = _call(module, p, "__call__", h_head, shared["cos"], shared["sin"], shared["mask"],
                                       edits, mutable=["cache"])
            kv = dict(state["cache"]["self_attn"])
        h, _ = _call(module, p, "__call__", h, rows["cos"], rows["sin"], rows["mask"], edits, kv)
        return (h, h_head), None

    h_head = jnp.zeros((0,)) if shared is None else shared["h"]
    (h, h_head), _ = jax.lax.scan(one, (rows["h"], h_head), jnp.arange(lo, hi))
    return h, None if shared is None else h_head


def _slice(tree, layer):
    """Layer ``layer`` (static or traced) of a tree with a leading layer axis, without that axis."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, layer, keepdims=False), tree)


def _edits_at(interventions: Interventions, layer: int, positions) -> dict:
    """Layer ``layer``'s edits at ``positions`` [B, S]: position-specific edits (a token axis T > 1) are gathered,
    the others broadcast as they are."""
    def at(x):
        x = x[layer]
        return at_positions(x, positions) if x.ndim == 3 and x.shape[1] > 1 else x

    return jax.tree.map(at, dict(interventions))
