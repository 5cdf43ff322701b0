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


class Attention(nn.Module):
    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, prefix=None):
        """x [B, T, H], mask [B, 1, T, P + T] (True = may attend), prefix {"key", "value"} [1 or B, P, K, D]
        or None -> [B, T, H]."""
        cfg = self.config
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.dtype)
        b, t, _ = x.shape
        qkv = functools.partial(dense, use_bias=cfg.attention_bias)
        q = qkv(cfg.num_attention_heads * cfg.head_dim, name="q_proj")(x)
        k = qkv(cfg.num_key_value_heads * cfg.head_dim, name="k_proj")(x)
        v = qkv(cfg.num_key_value_heads * cfg.head_dim, name="v_proj")(x)
        q = apply_rope(q.reshape(b, t, cfg.num_attention_heads, cfg.head_dim), cos, sin)
        k = apply_rope(k.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
        v = v.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
        if self.is_mutable_collection("cache") and not self.is_initializing():
            self.put_variable("cache", "key", k)
            self.put_variable("cache", "value", v)
        if prefix is not None:
            def prepend(cached, x):
                return jnp.concatenate([jnp.broadcast_to(cached, (b, *cached.shape[1:])).astype(x.dtype), x], axis=1)
            k, v = prepend(prefix["key"], k), prepend(prefix["value"], v)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.head_dim**-0.5)
        return dense(cfg.hidden_size, use_bias=cfg.o_proj_bias, name="o_proj")(out.reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU MLP with the neuron sites ``gate_act`` and ``mlp_in`` as identity submodules."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, interventions: Interventions):
        """x [B, T, H] -> [B, T, H]; ``interventions`` holds this layer's slice of each edit."""
        cfg = self.config
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype, param_dtype=self.dtype)
        gate_act = Site(name="gate_act")(nn.silu(dense(cfg.intermediate_size, name="gate_proj")(x)),
                                         interventions.get("gate_act"))
        mlp_in = Site(name="mlp_in")(gate_act * dense(cfg.intermediate_size, name="up_proj")(x),
                                     interventions.get("mlp_in"))
        return dense(cfg.hidden_size, name="down_proj")(mlp_in)


class DecoderLayer(nn.Module):
    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, cos, sin, mask, interventions: Interventions, prefix=None):
        norm = functools.partial(RMSNorm, self.config.rms_norm_eps, self.dtype)
        attention = Attention(self.config, self.dtype, name="self_attn")
        h = h + attention(norm(name="input_layernorm")(h), cos, sin, mask, prefix)
        h = h + MLP(self.config, self.dtype, name="mlp")(norm(name="post_attention_layernorm")(h), interventions)
        return h, None


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
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        p = 0 if prefix is None else check_prefix(prefix, cfg, b)
        seen = jnp.ones((b, p), bool)  # the prefix slots each row may see
        if p and "mask" in prefix:
            seen = jnp.broadcast_to(jnp.asarray(prefix["mask"], bool), (b, p))
        if attention_mask.ndim == 3 and position_ids is None:
            raise ValueError("a [B, T, T] attention_mask needs position_ids [B, T]")
        if position_ids is None:
            start = seen.sum(-1, dtype=jnp.int32)[:, None]
            position_ids = start + jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        interventions = dict(interventions or {})
        check_interventions(interventions, cfg.num_hidden_layers, (b, t), cfg.intermediate_size)
        causal = jnp.tril(jnp.ones((t, t), bool))
        visible = attention_mask.astype(bool)
        mask = causal[None] & (visible if visible.ndim == 3 else visible[:, None, :])
        if p:
            mask = jnp.concatenate([jnp.broadcast_to(seen[:, None, :], (b, t, p)), mask], axis=-1)
        mask = mask[:, None]
        cos, sin = rope_tables(position_ids, cfg.head_dim, cfg.rope_theta, self.dtype)
        kv = None if prefix is None else {"key": prefix["key"], "value": prefix["value"]}  # scanned over L
        h, _ = self.layers(h, cos, sin, mask, interventions, kv)
        return self.norm(h)

    def embed_inputs(self, input_ids):
        return self.embed_tokens(input_ids)

    def attend(self, h):
        """Logits through the tied embedding matrix."""
        return self.embed_tokens.attend(h)


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
