"""The Whisper-style audio encoder shared by the LALM ports, in Flax linen.

One implementation, two input regimes (both from transformers' classes):

* **full window** (Whisper-large-v3 for Kimi-Audio, Audio Flamingo 3): exactly ``2 * max_source_positions``
  mel frames per row, a learned position table, full attention over the conv outputs (AF3 masks the
  keys past a partial window's length; Whisper masks nothing).
* **chunked** (Qwen2.5-Omni): each clip's valid frames are cut into ``chunk_frames``-frame chunks that
  are encoded independently — zero padding at the chunk edges, sinusoidal positions restarting per
  chunk, attention only within a chunk (block-diagonal) — then concatenated again.

Both: conv1(k3, p1) -> GELU -> conv2(k3, s2, p1) -> GELU -> + positions -> pre-norm encoder layers ->
[AvgPool1d(2, 2)] -> LayerNorm -> [Linear proj]. Exact (erf) GELU, LayerNorm eps 1e-5, k_proj without bias.

Options of the full-window regime for the GLM-4-Voice speech tokenizer (:mod:`ports.glm4_voice`):
``causal_conv`` (both convolutions padded 2 frames on the left only), ``block_size`` (block-causal attention
over the conv frames: a query sees every earlier key and every key of its own block) and ``final_norm=False``
(no last LayerNorm). Attention masks are [B, Q, K] bool: Q = 1 for a key mask, Q = S for a full mask.

Shapes: B = rows (clips or windows), M = mel bins, F = mel frames, S = frames after conv2 (F / 2),
N = output tokens (S / 2 when pooled, else S), D = d_model, O = output width (``output_dim`` or D).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ports.config import Config, UnsupportedConfigError
from ports.rules import LAYER, LINEAR, Rule, identity

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, used by every Whisper-style encoder here


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig(Config):
    """A Whisper-style encoder. Field names follow transformers' Whisper/Omni audio configs.

    chunk_frames: None = full-window regime; else the chunk length in mel frames (Omni: 2 * n_window).
    positions: "learned" (a stored [max_source_positions, D] table) or "sinusoidal" (computed).
    pool: AvgPool1d(2, 2) before the final LayerNorm.
    output_dim: width of a final Linear projection (Omni's ``proj``); None for no projection.
    causal_conv: conv1 and conv2 padded ``kernel - 1`` = 2 frames on the left and none on the right, so a
        conv frame never sees a later mel frame (GLM-4-Voice's ``CausalConv1d``). Full-window regime only.
    block_size: None = every valid key is visible to every query; else block-causal attention in conv
        frames: query q sees key k iff k <= q or k // block_size == q // block_size (and k is valid).
        Full-window regime only.
    final_norm: apply the last LayerNorm (``layer_norm``); False for an encoder cut before it.
    """

    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    max_source_positions: int
    chunk_frames: int | None = None
    positions: str = "learned"
    pool: bool = False
    output_dim: int | None = None
    causal_conv: bool = False
    block_size: int | None = None
    final_norm: bool = True

    def __post_init__(self):
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of "
                             f"encoder_attention_heads={self.encoder_attention_heads}")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions={self.positions!r}; expected 'learned' or 'sinusoidal'")
        chunk = self.chunk_frames
        if chunk is not None and (chunk % 2 or chunk // 2 > self.max_source_positions):
            raise ValueError(f"chunk_frames={self.chunk_frames} must be even and at most "
                             f"2 * max_source_positions={2 * self.max_source_positions}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size={self.block_size} must be a positive number of conv frames (or None)")
        if chunk is not None and (self.causal_conv or self.block_size is not None):
            raise ValueError("causal_conv and block_size are options of the full-window regime; "
                             f"chunk_frames={chunk} selects the chunked one")

    @property
    def window_frames(self) -> int:
        """Mel frames per row in the full-window regime."""
        return 2 * self.max_source_positions

    @property
    def out_width(self) -> int:
        return self.output_dim or self.d_model


# Attributes every transformers config carries (bookkeeping, training, output switches): no forward effect.
HF_BOOKKEEPING = frozenset({
    "architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path", "initializer_range",
    "init_std", "output_attentions", "output_hidden_states", "return_dict", "use_return_dict",
    "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type", "bos_token_id",
    "eos_token_id", "pad_token_id", "use_cache", "ignore_index", "tokenizer_class",
})
# Dropouts (inference only) and the encoder's own bookkeeping.
ENCODER_IGNORED = HF_BOOKKEEPING | {"model_type", "dropout", "attention_dropout", "activation_dropout",
                                    "layerdrop", "encoder_layerdrop"}


def encoder_config_from_hf(hf: Mapping[str, Any], *, names: Mapping[str, str], extra: Mapping[str, Any],
                           ignored: frozenset[str] = frozenset(), what: str) -> AudioEncoderConfig:
    """Reads an encoder sub-config, refusing every attribute it neither implements nor knowingly ignores.

    ``names`` maps our field -> the HF attribute; ``extra`` fixes the regime fields (chunk_frames, ...).
    """
    problems = []
    unknown = sorted(set(hf) - set(names.values()) - ENCODER_IGNORED - ignored - {"activation_function",
                                                                                  "scale_embedding"})
    if unknown:
        problems.append(f"unknown attributes {unknown}")
    if hf.get("activation_function", "gelu") != "gelu":
        problems.append(f"activation_function={hf['activation_function']!r} is not implemented "
                        "(expected 'gelu')")
    if hf.get("scale_embedding", False):
        problems.append("scale_embedding=True is not implemented")
    if problems:
        raise UnsupportedConfigError(f"{what} is not supported by the port: " + "; ".join(problems))
    return AudioEncoderConfig(**{ours: hf[theirs] for ours, theirs in names.items()}, **extra)


# Whisper's decoder, generation and tokenizer settings: the ports run the encoder only.
WHISPER_SKIPPED = HF_BOOKKEEPING | {
    "vocab_size", "max_target_positions", "activation_function_decoder", "apply_spec_augment",
    "mask_time_prob", "mask_time_length", "mask_time_min_masks", "mask_feature_prob", "mask_feature_length",
    "mask_feature_min_masks", "median_filter_width", "begin_suppress_tokens", "suppress_tokens",
    "decoder_start_token_id", "forced_decoder_ids", "classifier_proj_size", "use_weighted_layer_sum",
    "num_hidden_layers", "is_encoder_decoder", "tie_word_embeddings", "max_length", "alignment_heads",
    "lang_ids", "no_timestamps_token_id", "generation_config",
}


def whisper_config_from_hf(hf: Mapping[str, Any], what: str = "config.json") -> AudioEncoderConfig:
    """The encoder of a transformers ``WhisperConfig`` (full-window regime, learned positions, no pooling)."""
    if hf.get("model_type") != "whisper":
        raise UnsupportedConfigError(f"{what} has model_type={hf.get('model_type')!r}; expected 'whisper'")
    return encoder_config_from_hf(
        {k: v for k, v in hf.items() if not k.startswith("decoder") and k not in WHISPER_SKIPPED},
        names={f: f for f in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
                              "encoder_ffn_dim", "max_source_positions")},
        extra={}, what=what)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's sinusoidal position table [length, channels] (sin half, then cos half), float32."""
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def conv_lengths(frames):
    """Valid positions after conv2 (stride 2) for ``frames`` valid mel frames: ceil(frames / 2)."""
    return (frames - 1) // 2 + 1


def output_lengths(frames):
    """Encoder tokens after the AvgPool1d(2, 2): ((frames - 1) // 2 + 1 - 2) // 2 + 1."""
    return (conv_lengths(frames) - 2) // 2 + 1


def attention_mask(valid, block_size: int | None = None):
    """The attention mask of full-window rows: valid [B, S] bool (True = a real conv frame) -> [B, Q, S] bool.

    block_size None: the key mask [B, 1, S] (every query sees every valid key). Else the block-causal mask
    [B, S, S]: query q sees key k iff (k <= q or k // block_size == q // block_size) and k is valid. Padded
    frames are masked as keys only: their queries still run, and their outputs are the caller's to drop.
    """
    if block_size is None:
        return valid[:, None, :]
    pos = jnp.arange(valid.shape[1])
    q, k = pos[:, None], pos[None, :]
    visible = (k <= q) | (k // block_size == q // block_size)
    return visible[None] & valid[:, None, :]


def _dense(n: int, dtype, name: str | None = None, bias: bool = True) -> nn.Dense:
    return nn.Dense(n, use_bias=bias, dtype=dtype, param_dtype=dtype, name=name)


def _layer_norm(dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(LN_EPS, dtype=dtype, param_dtype=dtype, name=name)


class EncoderAttention(nn.Module):
    config: AudioEncoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        """x [B, S, D], mask [B, Q, S] bool (True = may be attended to; Q = 1: the same keys for every query,
        Q = S: one row per query) -> [B, S, D]."""
        cfg = self.config
        heads = cfg.encoder_attention_heads
        b, s, _ = x.shape

        def project(name, bias=True):
            y = _dense(cfg.d_model, self.dtype, name, bias)(x)
            return y.reshape(b, s, heads, cfg.d_model // heads)

        q, k, v = project("q_proj"), project("k_proj", bias=False), project("v_proj")
        out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :])  # broadcast over heads
        return _dense(cfg.d_model, self.dtype, "out_proj")(out.reshape(b, s, cfg.d_model))


class EncoderLayer(nn.Module):
    config: AudioEncoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, mask):
        """h [B, S, D], mask [B, Q, S] bool (see EncoderAttention) -> ([B, S, D], None) (a scan body)."""
        cfg = self.config
        attn_in = _layer_norm(self.dtype, "self_attn_layer_norm")(h)
        h = h + EncoderAttention(cfg, self.dtype, name="self_attn")(attn_in, mask)
        y = _dense(cfg.encoder_ffn_dim, self.dtype, "fc1")(_layer_norm(self.dtype, "final_layer_norm")(h))
        return h + _dense(cfg.d_model, self.dtype, "fc2")(jax.nn.gelu(y, approximate=False)), None


class AudioEncoder(nn.Module):
    """The encoder; parameters: conv1, conv2, [embed_positions], layers (scanned), [layer_norm], [proj]."""

    config: AudioEncoderConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        # A causal conv pads kernel - 1 = 2 frames on the left, none on the right: no frame sees a later one.
        padding = ((2, 0),) if cfg.causal_conv else ((1, 1),)
        self.conv1, self.conv2 = (nn.Conv(cfg.d_model, (3,), strides=(s,), padding=padding,
                                          dtype=self.dtype, param_dtype=self.dtype) for s in (1, 2))
        if cfg.positions == "learned":
            self.embed_positions = self.param("embed_positions", nn.initializers.normal(0.02),
                                              (cfg.max_source_positions, cfg.d_model), self.dtype)
        self.layers = nn.scan(EncoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=nn.broadcast, length=cfg.encoder_layers)(cfg, self.dtype)
        if cfg.final_norm:
            self.layer_norm = _layer_norm(self.dtype)
        if cfg.output_dim is not None:
            self.proj = _dense(cfg.output_dim, self.dtype)

    def __call__(self, input_features, frames_mask=None):
        """input_features [B, M, F] (transformers' layout), frames_mask [B, F] (1 = valid frame, a prefix
        of each row; None = all valid) -> (tokens [B, N, O], valid [B, N] bool).

        Full-window regime: F is ``2 * max_source_positions``, or fewer: since the keys past a clip's frames
        are masked, a window cut at least 2 frames after its clip's end (the convolutions' reach) gives the
        clip exactly the tokens of the whole window, for a fraction of the work. Chunked regime: any F.
        """
        cfg = self.config
        b, m, f = input_features.shape
        if m != cfg.num_mel_bins:
            raise ValueError(f"input_features has {m} mel bins; the encoder expects {cfg.num_mel_bins}")
        x = jnp.swapaxes(input_features, 1, 2).astype(self.dtype)
        ones = jnp.ones((b, f), jnp.int32)
        frames = (ones if frames_mask is None else frames_mask.astype(jnp.int32)).sum(-1)
        if cfg.chunk_frames is None:
            if f > cfg.window_frames or f % 2:
                raise ValueError(f"input_features has {f} frames per window; the encoder takes "
                                 f"{cfg.window_frames} (2 * max_source_positions), or an even number fewer "
                                 "(a window cut short: see check_clip_frames)")
            h, valid = self._full_window(x, frames)
        else:
            h, valid = self._chunked(x, frames)
        if cfg.pool:
            if h.shape[1] % 2:
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 0)))
            h = h.reshape(b, h.shape[1] // 2, 2, -1).mean(axis=2)
            valid = jnp.arange(h.shape[1])[None, :] < output_lengths(frames)[:, None]
        if cfg.final_norm:
            h = self.layer_norm(h)
        if cfg.output_dim is not None:
            h = self.proj(h)
        return h, valid

    def _full_window(self, x, frames):
        h = jax.nn.gelu(self.conv1(x), approximate=False)
        h = jax.nn.gelu(self.conv2(h), approximate=False)
        h = h + self.embed_positions[:h.shape[1]].astype(self.dtype)
        valid = jnp.arange(h.shape[1])[None, :] < conv_lengths(frames)[:, None]
        h, _ = self.layers(h, attention_mask(valid, self.config.block_size))
        return h, valid

    def _chunked(self, x, frames):
        cfg = self.config
        b, f, m = x.shape
        size = cfg.chunk_frames
        n_chunks = -(-f // size)
        x = jnp.pad(x, ((0, 0), (0, n_chunks * size - f), (0, 0)))
        # transformers packs each clip's valid frames and zero-pads every chunk: padding frames never leak in.
        x = jnp.where((jnp.arange(n_chunks * size)[None, :] < frames[:, None])[..., None], x, 0)
        chunk_len = jnp.clip(frames[:, None] - size * jnp.arange(n_chunks)[None, :], 0, size).reshape(-1)
        x = x.reshape(b * n_chunks, size, m)
        h = jax.nn.gelu(self.conv1(x), approximate=False)
        h = h * (jnp.arange(size)[None, :] < chunk_len[:, None])[..., None].astype(h.dtype)
        h = jax.nn.gelu(self.conv2(h), approximate=False)
        per_chunk = h.shape[1]
        h = h + jnp.asarray(sinusoids(per_chunk, cfg.d_model), self.dtype)
        keys = jnp.arange(per_chunk)[None, :] < conv_lengths(chunk_len)[:, None]
        # An all-padding chunk attends to itself so no softmax row is empty; its outputs are discarded.
        keys = keys | (chunk_len == 0)[:, None]
        h, _ = self.layers(h, keys[:, None, :])
        # Every chunk but a clip's last is full, so the valid tokens of a clip form a prefix of its row.
        h = h.reshape(b, n_chunks * per_chunk, -1)
        valid = jnp.arange(h.shape[1])[None, :] < conv_lengths(frames)[:, None]
        return h, valid


def is_concrete(*arrays) -> bool:
    """True when every array has values (not a jit/eval_shape tracer): input checks can run then."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_clip_frames(frames_mask, config: AudioEncoderConfig, what: str = "clip") -> None:
    """With concrete inputs: each row's valid frames must be a prefix and give at least one audio token."""
    if not is_concrete(frames_mask):
        return
    mask = np.asarray(frames_mask).astype(np.int64)
    if (np.diff(mask, axis=-1) > 0).any():
        raise ValueError(f"the {what} frame mask is not a prefix of ones in every row; expected right padding "
                         "(the feature extractor's attention_mask)")
    frames = mask.sum(-1)
    if config.chunk_frames is None and mask.shape[-1] < config.window_frames:
        close = np.flatnonzero(frames > mask.shape[-1] - 2)
        if close.size:
            raise ValueError(f"{what}s {close.tolist()} end within 2 frames of a window cut to {mask.shape[-1]} "
                             f"frames; their last tokens would see the cut (pad the window to {config.window_frames}"
                             " frames, or cut it later)")
    tokens = output_lengths(frames) if config.pool else conv_lengths(frames)
    empty = np.flatnonzero(tokens <= 0)
    if empty.size:
        raise ValueError(f"{what}s {empty.tolist()} have {frames[empty].tolist()} valid mel frames, which give no "
                         f"audio token; each needs at least {3 if config.pool else 1} frames (empty audio?)")


def splice(embeds, placeholders, audio, valid, what: str = "audio placeholders"):
    """Puts the valid audio tokens, in order, at the placeholder positions (transformers' masked_scatter).

    embeds [B, T, H]; placeholders [B, T] bool; audio [R, N, H] with valid [R, N] bool (R clips or windows,
    each row's valid tokens a prefix). The k-th placeholder in row-major order gets the k-th valid token.
    With concrete inputs the total counts are checked, as transformers checks them (a prompt may hold several
    clips, or none).
    """
    if is_concrete(placeholders, valid):
        n_ph, n_audio = np.asarray(placeholders).sum(-1), np.asarray(valid).sum(-1)
        if n_ph.sum() != n_audio.sum():
            raise ValueError(f"the prompts hold {n_ph.sum()} {what} ({n_ph.tolist()} per prompt) but the audio "
                             f"features give {n_audio.sum()} audio tokens ({n_audio.tolist()} per row of features); "
                             "the counts must be equal (build the prompt from the same features, e.g. with "
                             "ports.prompts)")
    flat_audio = audio.reshape(-1, audio.shape[-1]).astype(embeds.dtype)
    order = jnp.nonzero(valid.reshape(-1), size=valid.size, fill_value=0)[0]
    rank = jnp.cumsum(placeholders.reshape(-1).astype(jnp.int32)) - 1
    gathered = flat_audio[order[jnp.clip(rank, 0, valid.size - 1)]].reshape(embeds.shape)
    return jnp.where(placeholders[..., None], gathered, embeds)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv1d weight [out, in, k] -> Flax Conv kernel [k, in, out]."""
    return w.transpose(2, 1, 0)


CONV = {"transform": conv_kernel, "inverse": conv_kernel}  # its own inverse
NONE = {"transform": identity, "inverse": identity}


def encoder_rules(hf: str, path: str, config: AudioEncoderConfig,
                  final_norm: str = "layer_norm") -> tuple[Rule, ...]:
    """The encoder's conversion table: ``hf`` is the checkpoint prefix (e.g. ``thinker.audio_tower``; ``""``
    for keys such as ``conv1.weight``), ``path`` our module path (e.g. ``audio_tower/``), ``final_norm`` the
    checkpoint's name of the last LayerNorm (Omni: ``ln_post``; unused when ``config.final_norm`` is False)."""
    hf = f"{hf}." if hf else ""

    def affine(hf_name, ours, weight="kernel", both_ways=LINEAR, bias=True):
        out = [Rule(f"{hf_name}.weight", f"{ours}/{weight}", **both_ways)]
        return out + [Rule(f"{hf_name}.bias", f"{ours}/bias")] if bias else out

    layer, ours = f"{hf}layers.{LAYER}", f"{path}layers"
    rules = [*affine(f"{hf}conv1", f"{path}conv1", both_ways=CONV),
             *affine(f"{hf}conv2", f"{path}conv2", both_ways=CONV)]
    if config.final_norm:
        rules += affine(f"{hf}{final_norm}", f"{path}layer_norm", "scale", NONE)
    if config.positions == "learned":
        rules.append(Rule(f"{hf}embed_positions.weight", f"{path}embed_positions"))
    if config.output_dim is not None:
        rules += affine(f"{hf}proj", f"{path}proj")
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        rules += affine(f"{layer}.{norm}", f"{ours}/{norm}", "scale", NONE)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rules += affine(f"{layer}.self_attn.{proj}", f"{ours}/self_attn/{proj}", bias=proj != "k_proj")
    for fc in ("fc1", "fc2"):
        rules += affine(f"{layer}.{fc}", f"{ours}/{fc}")
    return tuple(rules)
