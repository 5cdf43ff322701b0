"""Text generation under interventions: key/value-cache decoding through any port, many interventions at once.

A prompt batch is embedded once (the audio encoders run once per clip). Under each intervention the
prompt is run once (the *prefill*), which fills the decoder's cache (:mod:`ports.decoder`: the same
structure as the shared prompt prefix, with a mask of the slots each row sees), and then one token per row
is generated per step, fed back through the port's ``embed_answer``. V stacked interventions are vmapped in
chunks, as :func:`esn_jax.sweep.score_variants` does; the prompt prefix all rows share runs once per
variant; the steps are a ``lax.while_loop`` that stops when every row of a chunk has stopped.

Where an intervention applies (see :mod:`ports.sites` for the edit shapes):
  * ``edit_prompt``: the prompt's positions get the edits (position-specific edits ``[L, B, T, I]`` too);
  * ``edit_generated``: each generated position gets the edits whose position axis is absent or 1
    (``[L, I]``, ``[L, B, 1, I]``); an edit written for the T prompt positions leaves generated tokens alone.

Sampling: temperature 0 is greedy (the first of tied tokens, as ``argmax``); otherwise logits are divided
by the temperature, cut to the smallest set of most likely tokens whose probability reaches ``top_p``,
and sampled with ``jax.random.fold_in(key(seed), step)``. Every variant draws with the same key, so two
interventions differ only by what they do to the logits (common random numbers).

Shapes: V = variants, B = prompts, T = prompt length, N = max_new_tokens, H = hidden, L = layers,
I = neurons.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esn_jax import prefix, sweep
from esn_jax.scoring import embed_jitted
from ports.decoder import empty_cache, prefix_cache, write_cache
from ports.sites import Interventions


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a compiled generation program is specialised on (hashable: a static jit argument)."""

    max_new_tokens: int
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    edit_prompt: bool = True
    edit_generated: bool = True
    prefix_length: int = 0


def generate(module, params, batch: Mapping[str, Any], max_new_tokens: int, interventions: Interventions | None = None,
             *, stop_token_ids: Sequence[int] = (), pad_token_id: int | None = None, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, edit_prompt: bool = True, edit_generated: bool = True,
             chunk_size: int | None = None, share_prefix: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Generates up to ``max_new_tokens`` tokens after each prompt -> ``(ids, lengths)``.

    batch: the port's raw forward kwargs (``input_ids`` [B, T] or ``inputs_embeds`` [B, T, H], audio inputs,
    ``attention_mask`` [B, T]), prompts **left-padded** so that every row's prompt ends at T - 1.
    interventions: None for the unedited model, or V stacked interventions with a leading variant axis
    (:func:`esn_jax.interventions.stack`, or e.g. ``gain(masks [V, L, I], alpha)``); ``[None]`` of a single
    one gives V = 1.
    stop_token_ids: a row stops after writing one of them (it is kept in the output and counted in its
    length); later positions hold ``pad_token_id`` (default the first stop token, else 0).
    temperature, top_p, seed: sampling (module docstring); temperature 0 is greedy and ignores the others.
    edit_prompt, edit_generated: where the interventions apply (module docstring).
    chunk_size: variants per vmapped step (default all V).
    share_prefix: run the prompt prefix every row shares once per variant (only when the prompt's edits are
    position-independent).

    Returns ids [B, N] int32 (or [V, B, N]) and lengths [B] int32 (or [V, B]): the tokens each row wrote.
    """
    settings = _settings(max_new_tokens, stop_token_ids, pad_token_id, temperature, top_p, edit_prompt,
                         edit_generated)
    if "answer_positions" in batch:
        raise ValueError("generate takes left-padded prompts ending at T - 1; got answer_positions (right "
                         "padding): pad the prompts on the left")
    ref = batch["inputs_embeds"] if "inputs_embeds" in batch else batch["input_ids"]
    shape = tuple(np.shape(ref)[:2])
    _check_left_padded(batch.get("attention_mask"))
    flat = [np.shape(leaf) for leaf in jax.tree.leaves(interventions)]
    if any(len(s) < 3 for s in flat):  # an edit [L, I] without the variant axis would be read as L variants
        raise ValueError(f"interventions need a leading variant axis V (edits [V, L, I] or [V, L, B, T, I]); got "
                         f"edit shapes {flat}; for one intervention add it: jax.tree.map(lambda x: x[None], edits)")
    chunks, v = (None, None) if interventions is None else sweep.chunk_variants(
        params, interventions, shape, chunk_size)
    embedded = embed_jitted(module, params, dict(batch))
    shareable = interventions is None or not edit_prompt or all(
        np.ndim(leaf) == 3 for leaf in jax.tree.leaves(interventions))  # [V, L, I]: every position alike
    p = prefix.shared_length(embedded) if share_prefix and shareable else 0
    settings = dataclasses.replace(settings, prefix_length=p)
    ids, lengths = _generate(module, params, embedded, chunks, jax.random.key(seed), settings)
    return (ids, lengths) if v is None else (ids[:v], lengths[:v])


def _settings(max_new_tokens, stop_token_ids, pad_token_id, temperature, top_p, edit_prompt, edit_generated):
    n = int(max_new_tokens)
    if n < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    stops = tuple(int(t) for t in stop_token_ids)
    pad = (stops[0] if stops else 0) if pad_token_id is None else int(pad_token_id)
    return Settings(n, stops, pad, float(temperature), float(top_p), bool(edit_prompt), bool(edit_generated))


def _check_left_padded(mask) -> None:
    if mask is None or not isinstance(mask, np.ndarray | jax.Array) or isinstance(mask, jax.core.Tracer):
        return
    mask = sweep.local_rows(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, T]; got shape {mask.shape}")
    bad = np.flatnonzero(~mask[:, -1] | (np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
    if bad.size:
        raise ValueError(f"generate needs left-padded prompts (padding, then the prompt up to T - 1); rows "
                         f"{bad.tolist()} have padding after a token")


def generated_edits(interventions: Interventions | None) -> dict:
    """The edits a generated position gets: those whose position axis (second to last, of edits with three or
    more axes) is absent or 1; an edit written for the prompt's T positions is left out."""
    out = {}
    for site, edit in (interventions or {}).items():
        kept = {kind: value for kind, value in edit.items() if np.ndim(value) < 3 or np.shape(value)[-2] == 1}
        if kept:
            out[site] = kept
    return out


@functools.partial(jax.jit, static_argnames=("module", "settings"))
def _generate(module, params, embedded, chunks, key, settings: Settings):
    p = settings.prefix_length
    head, rest = prefix.split(embedded, p) if p else (None, embedded)

    def begin(edits):
        prompt_edits = edits if settings.edit_prompt else None
        shared = prefix.cache(module, params, head, prompt_edits or {}) if p else None
        return prefill(module, params, rest, shared, prompt_edits, settings.max_new_tokens - 1)

    def advance(edits, cache, tokens, positions, slot):
        step_edits = generated_edits(edits) if settings.edit_generated else None
        return step(module, params, cache, tokens, positions, slot, step_edits)

    if chunks is None:
        return decode(begin, advance, None, key, settings)
    # The variants are vmapped inside the loop rather than the loop over variants: a vmapped while_loop would
    # select between old and new caches of every variant at every step.
    batched = (jax.vmap(begin), jax.vmap(advance, in_axes=(0, 0, 0, 0, None)))
    ids, lengths = jax.lax.map(lambda edits: decode(*batched, edits, key, settings), chunks)
    return ids.reshape(-1, *ids.shape[2:]), lengths.reshape(-1, *lengths.shape[2:])  # [V, B, N], [V, B]


def prefill(module, params, embedded: Mapping[str, Any], shared, interventions, slots: int):
    """Runs the prompt -> (logits at T - 1 [B, V], cache with ``slots`` empty slots, next position [B]).

    embedded: ``inputs_embeds`` [B, T, H] (left-padded), ``attention_mask`` [B, T], optional ``position_ids``.
    shared: the shared prompt prefix's cache [L, 1, P, K, D] (no mask) preceding every row, or None.
    """
    x = embedded["inputs_embeds"]
    b, t = x.shape[:2]
    mask = jnp.asarray(embedded.get("attention_mask", jnp.ones((b, t), jnp.int32)), bool)
    logits, state = module.apply({"params": params}, **embedded, interventions=interventions,
                                 logits_positions=jnp.full((b, 1), t - 1, jnp.int32), prefix=shared,
                                 mutable=["cache"])
    own = prefix_cache(state)
    if shared is not None:
        own = {k: jnp.concatenate([jnp.broadcast_to(shared[k], (shared[k].shape[0], b, *shared[k].shape[2:]))
                                   .astype(own[k].dtype), own[k]], axis=2) for k in ("key", "value")}
        mask = jnp.concatenate([jnp.ones((b, shared["key"].shape[2]), bool), mask], axis=1)
    if "position_ids" in embedded:
        following = jnp.asarray(embedded["position_ids"])[:, -1] + 1
    else:
        following = mask.sum(-1, dtype=jnp.int32)
    return logits[:, 0], empty_cache(own, mask, slots), following


def step(module, params, cache, tokens, positions, slot, interventions):
    """Feeds one token per row -> (its logits [B, V], the cache with its keys and values at ``slot``).

    tokens [B] int, positions [B] int (the tokens' positions), slot: the cache slot they are written to.
    """
    b = tokens.shape[0]
    x = module.apply({"params": params}, tokens[:, None], method="embed_answer")
    logits, state = module.apply({"params": params}, inputs_embeds=x, attention_mask=jnp.ones((b, 1), jnp.int32),
                                 position_ids=positions[:, None], interventions=interventions,
                                 logits_positions=jnp.zeros((b, 1), jnp.int32), prefix=cache, mutable=["cache"])
    return logits[:, 0], write_cache(cache, prefix_cache(state), slot)


def decode(begin, advance, edits, key, settings: Settings):
    """Prefill and the generation loop -> ids [..., B, N], lengths [..., B].

    begin(edits) -> (logits [..., B, V], cache, positions [..., B]): :func:`prefill` (vmapped over variants when
    the arrays have a leading variant axis); advance(edits, cache, tokens, positions, slot) -> (logits, cache):
    :func:`step` likewise. The loop ends when every row of every variant has stopped.
    """
    n, stops = settings.max_new_tokens, jnp.asarray(settings.stop_token_ids or (-1,), jnp.int32)
    logits, cache, positions = begin(edits)
    first_slot = cache["mask"].shape[-1] - (n - 1)
    token = choose(logits, key, 0, settings)
    ids = jnp.full((*token.shape, n), settings.pad_token_id, jnp.int32).at[..., 0].set(token)
    done = jnp.isin(token, stops)

    def running(carry):
        i, _, done, *_ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, token, done, ids, cache, positions = carry
        logits, cache = advance(edits, cache, token, positions, first_slot + i - 1)
        token = jnp.where(done, settings.pad_token_id, choose(logits, key, i, settings))
        return i + 1, token, done | jnp.isin(token, stops), ids.at[..., i].set(token), cache, positions + 1

    carry = (jnp.asarray(1), token, done, ids, cache, positions)
    _, _, _, ids, _, _ = jax.lax.while_loop(running, body, carry)
    stopped = jnp.isin(ids, stops)
    lengths = jnp.where(stopped.any(-1), jnp.argmax(stopped, axis=-1) + 1, n).astype(jnp.int32)
    return ids, lengths


def choose(logits, key, i, settings: Settings):
    """The next token of every row from its logits [..., B, V] at step ``i`` (module docstring) -> [..., B] int32."""
    logits = logits.astype(jnp.float32)  # [..., B, V]
    if settings.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = logits / settings.temperature
    if settings.top_p < 1:
        ordered = jnp.sort(z, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the more likely tokens
        cutoff = jnp.min(jnp.where(before < settings.top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        z = jnp.where(z >= cutoff, z, -jnp.inf)
    return jax.random.categorical(jax.random.fold_in(key, i), z, axis=-1).astype(jnp.int32)
