"""The shared Qwen2/Qwen2.5 and Llama decoder in Flax linen: the language backbone of every LALM port.

Layers are scanned (``nn.scan``), so every parameter and every captured site carries a leading layer
axis ``L``. Shapes use B = batch, T = sequence, H = hidden, N = query heads, K = key/value heads,
D = head_dim, I = intermediate_size, V = vocab_size, P = prefix length.

A *prefix* is the key/value cache of tokens that precede every row of a call: ``{"key", "value"}`` each
[L, 1 or B, P, K, D], keys after RoPE, and optionally ``"mask"`` [1 or B, P] (1 = a token the row may see;
without it every slot is visible). It is the one cache structure of the project: the prompt prefix all
clips share (:mod:`esn_jax.prefix`, no mask) and the generation cache (:mod:`esn_jax.decoding`: a
left-padded prompt plus ``N`` slots for generated tokens, filled one per step; the mask says which slots
hold a token). A call run with ``mutable=["cache"]`` stores its own keys and values [L, B, T, K, D] (see
:func:`prefix_cache`); a later call given ``prefix=`` attends to them from every position, as if they were
prepended to each row, and :func:`write_cache` stores a step's keys and values into a slot.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from ports.config import DecoderConfig
from ports.sites import Interventions, Site, check_interventions


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the weight multiply (as transformers does)."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight * x32.astype(x.dtype)


def rope_tables(position_ids, head_dim: int, theta: float, dtype):
    """cos, sin for rotate-half RoPE: position_ids [B, T] -> two arrays [B, T, D]."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x, cos, sin):
    """x [B, T, heads, D] rotated by cos/sin [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def at_positions(x, positions):
    """x [B or 1, T, ...] at ``positions`` [B, S] -> [B, S, ...]."""
    idx = positions.reshape(*positions.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)


class Attention(nn.Module):
    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        qkv = functools.partial(nn.Dense, use_bias=cfg.attention_bias, dtype=self.dtype, param_dtype=self.dtype)
        self.q_proj = qkv(cfg.num_attention_heads * cfg.head_dim)
        self.k_proj = qkv(cfg.num_key_value_heads * cfg.head_dim)
        self.v_proj = qkv(cfg.num_key_value_heads * cfg.head_dim)
        self.o_proj = nn.Dense(cfg.hidden_size, use_bias=cfg.o_proj_bias, dtype=self.dtype, param_dtype=self.dtype)

    def keys_values(self, x, cos, sin):
        """x [B, T, H] -> keys (after RoPE) and values [B, T, K, D]."""
        cfg = self.config
        b, t, _ = x.shape
        k = apply_rope(self.k_proj(x).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
        return k, self.v_proj(x).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)

    def __call__(self, x, cos, sin, mask, prefix=None, at=None):
        """x [B, T, H], mask [B, 1, T, P + T] (True = may attend), prefix {"key", "value"} [1 or B, P, K, D]
        or None -> [B, T, H]; or [B, S, H], the queries at positions ``at`` [B, S] only (keys at every one)."""
        cfg = self.config
        b, t, _ = x.shape
        k, v = self.keys_values(x, cos, sin)
        if self.is_mutable_collection("cache") and not self.is_initializing():
            self.put_variable("cache", "key", k)
            self.put_variable("cache", "value", v)
        if at is not None:
            x, cos, sin = at_positions(x, at), at_positions(cos, at), at_positions(sin, at)
            mask = jnp.take_along_axis(mask, at[:, None, :, None], axis=2)
        q = apply_rope(self.q_proj(x).reshape(b, x.shape[1], cfg.num_attention_heads, cfg.head_dim), cos, sin)
        if prefix is not None:
            def prepend(cached, x):
                return jnp.concatenate([jnp.broadcast_to(cached, (b, *cached.shape[1:])).astype(x.dtype), x], axis=1)
            k, v = prepend(prefix["key"], k), prepend(prefix["value"], v)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.head_dim**-0.5)
        return self.o_proj(out.reshape(b, x.shape[1], -1))


class MLP(nn.Module):
    """SwiGLU MLP with the neuron sites ``gate_act`` and ``mlp_in`` as identity submodules."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype, param_dtype=self.dtype)
        self.gate_proj, self.up_proj = dense(cfg.intermediate_size), dense(cfg.intermediate_size)
        self.down_proj = dense(cfg.hidden_size)
        self.gate_act, self.mlp_in = Site(), Site()

    def __call__(self, x, interventions: Interventions):
        """x [B, T, H] -> [B, T, H]; ``interventions`` holds this layer's slice of each edit."""
        return self.outputs(*self.inputs(x), interventions)

    def inputs(self, x):
        """What no edit changes: silu(gate_proj x) and up_proj x, each [B, T, I]."""
        return nn.silu(self.gate_proj(x)), self.up_proj(x)

    def outputs(self, gate, up, interventions: Interventions):
        """The rest, from :meth:`inputs`' two arrays: the edited sites, then down_proj -> [B, T, H]."""
        gate_act = self.gate_act(gate, interventions.get("gate_act"))
        return self.down_proj(self.mlp_in(gate_act * up, interventions.get("mlp_in")))


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP, each added to the residual stream. Besides the whole layer (``__call__``) its
    parts run alone, for forwards split where edits begin (:mod:`ports.split_decoder`): ``attend``, then
    ``mlp_inputs``, then ``mlp_outputs``; ``keys_values`` is all another row needs of it."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        norm = functools.partial(RMSNorm, self.config.rms_norm_eps, self.dtype)
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.self_attn = Attention(self.config, self.dtype)
        self.mlp = MLP(self.config, self.dtype)

    def __call__(self, h, cos, sin, mask, interventions: Interventions, prefix=None):
        h = self.attend(h, cos, sin, mask, prefix)
        return self.mlp_outputs(h, *self.mlp_inputs(h), interventions), None

    def attend(self, h, cos, sin, mask, prefix=None, at=None):
        """h [B, T, H] -> the residual stream after attention [B, T, H], or at positions ``at`` [B, S] only."""
        out = self.self_attn(self.input_layernorm(h), cos, sin, mask, prefix, at)
        return (h if at is None else at_positions(h, at)) + out

    def keys_values(self, h, cos, sin):
        """h [B, T, H] -> this layer's keys and values [B, T, K, D]."""
        return self.self_attn.keys_values(self.input_layernorm(h), cos, sin)

    def mlp_inputs(self, h):
        """The residual stream after attention [B, T, H] -> the MLP's gate and up activations [B, T, I]."""
        return self.mlp.inputs(self.post_attention_layernorm(h))

    def mlp_outputs(self, h, gate, up, interventions: Interventions):
        """The residual stream after the MLP [B, T, H], from the one after attention and :meth:`mlp_inputs`."""
        return h + self.mlp.outputs(gate, up, interventions)


class Decoder(nn.Module):
    """Embeddings (optional), scanned decoder layers and the final norm: ``Qwen2Model``'s job."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.dtype)
        self.layers = nn.scan(
            DecoderLayer,
            variable_axes={"params": 0, "intermediates": 0, "cache": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, 0),
            length=cfg.num_hidden_layers,
        )(cfg, self.dtype)
        self.norm = RMSNorm(cfg.rms_norm_eps, self.dtype)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 interventions: Interventions | None = None, prefix=None):
        """Returns the final hidden states [B, T, H].

        input_ids [B, T] int, or inputs_embeds [B, T, H] (exactly one of them).
        attention_mask [B, T], 1 = token, 0 = padding (left or right); default all ones. Or [B, T, T]: which
        earlier tokens each token may see (causality still applies; the prefix stays visible), e.g. several
        continuations packed after one prompt; ``position_ids`` are then required.
        position_ids [B, T]; default ``cumsum(attention_mask) - 1`` so a padded row gets the positions it
        would have unpadded (transformers' bare forward uses 0..T-1 whatever the padding); after a
        prefix the default starts at the number of prefix tokens the row sees (P without a mask).
        interventions: see :mod:`ports.sites`; None or {} runs the unedited model.
        prefix: a key/value cache of P earlier slots (see the module docstring), or None.
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, H]")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        b, t, _ = h.shape
        p = 0 if prefix is None else check_prefix(prefix, cfg, b)
        interventions = dict(interventions or {})
        check_interventions(interventions, cfg.num_hidden_layers, (b, t), cfg.intermediate_size)
        cos, sin, mask = attention_inputs(cfg, self.dtype, (b, t), attention_mask, position_ids,
                                          None if prefix is None else prefix.get("mask", jnp.ones((1, p), bool)))
        kv = None if prefix is None else {"key": prefix["key"], "value": prefix["value"]}  # scanned over L
        h, _ = self.layers(h, cos, sin, mask, interventions, kv)
        return self.norm(h)

    def embed_inputs(self, input_ids):
        return self.embed_tokens(input_ids)

    def attend(self, h):
        """Logits through the tied embedding matrix."""
        return self.embed_tokens.attend(h)


def attention_inputs(cfg: DecoderConfig, dtype, shape: tuple[int, int], attention_mask=None, position_ids=None,
                     seen=None):
    """RoPE tables and the attention mask of a call on ``shape`` = (B, T) tokens -> cos, sin [B, T, D] and
    mask [B, 1, T, P + T] (True = may attend).

    attention_mask, position_ids: as :meth:`Decoder.__call__`; seen [1 or B, P]: the prefix slots each row may see
    (None: no prefix).
    """
    b, t = shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    p = 0 if seen is None else seen.shape[-1]
    seen = jnp.broadcast_to(jnp.ones((1, 0), bool) if seen is None else jnp.asarray(seen, bool), (b, p))
    if attention_mask.ndim == 3 and position_ids is None:
        raise ValueError("a [B, T, T] attention_mask needs position_ids [B, T]")
    if position_ids is None:
        start = seen.sum(-1, dtype=jnp.int32)[:, None]
        position_ids = start + jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    causal = jnp.tril(jnp.ones((t, t), bool))
    visible = attention_mask.astype(bool)
    mask = causal[None] & (visible if visible.ndim == 3 else visible[:, None, :])
    mask = jnp.concatenate([jnp.broadcast_to(seen[:, None, :], (b, t, p)), mask], axis=-1)
    cos, sin = rope_tables(position_ids, cfg.head_dim, cfg.rope_theta, dtype)
    return cos, sin, mask[:, None]


def check_prefix(prefix, cfg: DecoderConfig, batch: int) -> int:
    """P, the length of a prefix cache; raises unless both arrays are [L, 1 or B, P, K, D] for this model and
    the optional mask is [1 or B, P]."""
    if not isinstance(prefix, dict) or not {"key", "value"} <= set(prefix) <= {"key", "value", "mask"}:
        raise ValueError(f"prefix must be a dict with 'key' and 'value' (and optionally 'mask'); got "
                         f"{type(prefix).__name__} {sorted(prefix) if isinstance(prefix, dict) else ''}")
    k, v = jnp.shape(prefix["key"]), jnp.shape(prefix["value"])
    expected = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
    if k != v or len(k) != 5 or (k[0], k[3], k[4]) != expected or k[1] not in (1, batch):
        raise ValueError(f"prefix key/value must be [L, 1 or B, P, K, D] with (L, K, D) = {expected} and B = {batch}; "
                         f"got key {k}, value {v}")
    if "mask" in prefix and jnp.shape(prefix["mask"]) not in ((1, k[2]), (batch, k[2])):
        raise ValueError(f"prefix mask must be [1 or B, P] = [1 or {batch}, {k[2]}]; got {jnp.shape(prefix['mask'])}")
    return k[2]


def prefix_cache(state) -> dict:
    """The decoder's prefix cache {"key", "value"} [L, B, T, K, D] from the state a call with
    ``mutable=["cache"]`` returned (any port: the one decoder's entries are found by name)."""
    flat = traverse_util.flatten_dict(dict(state.get("cache", {})))
    found = {path[-1]: value for path, value in flat.items() if path[-2:-1] == ("self_attn",)}
    if set(found) != {"key", "value"} or len(flat) != 2:
        raise ValueError(f"expected one decoder's self_attn key/value cache; got {sorted(flat)}")
    return found


def empty_cache(cache, mask, slots: int) -> dict:
    """A generation cache: ``cache`` {"key", "value"} [L, 1 or B, P, K, D] whose rows see ``mask`` [B, P],
    followed by ``slots`` empty, unseen slots -> {"key", "value"} [L, B, P + slots, K, D], "mask" [B, P + slots]."""
    b = mask.shape[0]

    def grow(x):
        x = jnp.broadcast_to(x, (x.shape[0], b, *x.shape[2:]))
        return jnp.pad(x, ((0, 0), (0, 0), (0, slots), (0, 0), (0, 0)))

    return {"key": grow(cache["key"]), "value": grow(cache["value"]),
            "mask": jnp.pad(jnp.asarray(mask, bool), ((0, 0), (0, slots)))}


def write_cache(cache, new, slot) -> dict:
    """``cache`` with the keys and values of one step ``new`` {"key", "value"} [L, B, 1, K, D] (from
    :func:`prefix_cache`) stored at ``slot`` (a scalar, traced or not) and that slot made visible."""
    def put(x, y):
        return jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), slot, axis=2)

    return {"key": put(cache["key"], new["key"]), "value": put(cache["value"], new["value"]),
            "mask": jax.lax.dynamic_update_slice_in_dim(
                cache["mask"], jnp.ones((cache["mask"].shape[0], 1), bool), slot, axis=1)}


class Qwen2ForCausalLM(nn.Module):
    """Decoder + lm_head (tied or untied): the Flax counterpart of transformers' ``Qwen2ForCausalLM`` and
    ``LlamaForCausalLM`` (which one: ``config.model_type``)."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.model = Decoder(self.config, self.dtype)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False, dtype=self.dtype,
                                    param_dtype=self.dtype)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 interventions: Interventions | None = None, logits_positions=None, prefix=None):
        """Logits [B, T, V], or [B, S, V] at ``logits_positions`` [B, S] (e.g. the answer position).

        Other arguments as :meth:`Decoder.__call__`.
        """
        h = self.model(input_ids, attention_mask, position_ids, inputs_embeds, interventions, prefix)
        if logits_positions is not None:
            h = jnp.take_along_axis(h, logits_positions[..., None], axis=1)
        return self._head(h)

    def logits(self, h):
        """The last decoder layer's output [B, S, H] -> logits [B, S, V] (the final norm, then the head)."""
        return self._head(self.model.norm(h))

    def _head(self, h):
        return self.model.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)

    def embed_inputs(self, input_ids):
        """input_ids [B, T] -> inputs_embeds [B, T, H].

        Every port has this method: it runs whatever precedes the decoder (for the LALMs, the audio
        encoder and the splicing), so that sweeps compute it once and call the port with inputs_embeds.
        """
        return self.model.embed_inputs(input_ids)

    def embed_answer(self, answer_ids):
        """answer_ids [B, M] -> [B, M, H]: the embeddings the model feeds itself while it writes a text answer.

        Every port has this method; label scoring appends these after the prompt to teacher-force a
        multi-token label (for Kimi-Audio the answer also runs in its audio stream, as blanks).
        """
        return self.model.embed_inputs(answer_ids)


def language_model(module, params) -> tuple[Qwen2ForCausalLM, dict]:
    """The decoder with its head inside a port, and its parameters: the module itself for ``qwen2`` / ``llama``,
    ``language_model`` for the LALMs (whose forward on ``inputs_embeds`` is that module's)."""
    if isinstance(module, Qwen2ForCausalLM):
        return module, params
    return Qwen2ForCausalLM(module.config.text, module.dtype), params["language_model"]
