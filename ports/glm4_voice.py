"""The GLM-4-Voice speech tokenizer (``WhisperVQEncoder``, checkpoint ``THUDM/glm-4-voice-tokenizer``) in Flax linen.

Official code: github.com/THUDM/GLM-4-Voice, ``speech_tokenizer/modeling_whisper.py`` (``WhisperVQEncoder``,
``CausalConv1d``, ``vector_quantize``, ``WhisperVQEncoderLayer``), ``speech_tokenizer/utils.py``
(``extract_speech_token``) and ``speech_tokenizer/configuration_whisper.py`` (``WhisperVQConfig``).

The first ``quantize_position`` layers of a Whisper-large-v3-style encoder (the shared
:class:`ports.audio.AudioEncoder`), then average pooling and a nearest-codebook-row quantizer::

    h = GELU(conv2(GELU(conv1(mel))))              causal convs (encoder_causal_convolution): 2 frames of
                                                   left padding, none on the right; S = ceil(F / 2)
    h = h + embed_positions[:S]                    learned table [max_source_positions, D]
    h = layers[:quantize_position](h, mask)        pre-LayerNorm Whisper layers (k_proj without bias, erf GELU)
    h = AvgPool1d(pool)(zero_pad_to_multiple(h))   after layer pooling_position (== quantize_position); the
                                                   pad zeros enter the last average
    code = argmin_v |c_v|^2 + |h|^2 - 2 h . c_v    codebook [quantize_vocab_size, D]; the first index wins ties

Attention mask, in conv frames: key k is valid iff the mel frame mask subsampled ``[:, ::2]`` is 1; with
``quantize_causal_block_size`` (B) query q sees key k iff (k <= q or k // B == q // B) and k is valid
(block-causal), else every valid key. Padded frames are masked as keys only; they run through the convs
and layers like real frames (their features are used as given, not zeroed), and the last pooled state of a
row averages them in. Codes are valid where the pooled mask ``mask[:, ::2][:, ::pool]`` is 1. No final
LayerNorm (encoder-only mode). The checkpoint's ``ema_count``/``ema_weight`` (training statistics: ``ema_weight``
is the codebook times the counts) and ``embed_positions2`` (used only by layers after the quantizer, which
encoder-only mode does not build) carry nothing for the codes.

Audio: 16 kHz, cut into 30-s segments; a segment of L samples gives ceil(L / 1280) codes (12.5 Hz; 1280 =
conv stride 2 x pool 4 x hop 160), 375 for a full segment. Features: transformers' ``WhisperFeatureExtractor``
(128 mels, n_fft 400, hop 160) on the segments, padded to the longest rounded up to 1280 samples, with its
attention mask (see ``ports.features.kimi_audio``'s ``tokenizer_input_*``).

Shapes: S = segments (rows), M = mel bins, F = mel frames (even, <= 2 * max_source_positions), C = F / 2 conv
frames, N = ceil(C / pool) codes per row, D = d_model, V = codebook size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ports.audio import (
    ENCODER_IGNORED,
    WHISPER_SKIPPED,
    AudioEncoder,
    AudioEncoderConfig,
    encoder_rules,
    is_concrete,
)
from ports.config import Config, UnsupportedConfigError
from ports.features import HOP, SAMPLE_RATE, WINDOW_SECONDS
from ports.rules import Rule

CONV_STRIDE = 2  # conv1 stride 1 x conv2 stride 2


@dataclasses.dataclass(frozen=True)
class GLM4VoiceTokenizerConfig(Config):
    """encoder: the first ``quantize_position`` layers (full-window regime, learned positions, no final norm);
    pool_kernel: AvgPool1d kernel (= stride) after the last layer; codebook_size: quantize_vocab_size."""

    encoder: AudioEncoderConfig
    pool_kernel: int
    codebook_size: int

    def __post_init__(self):
        enc = self.encoder
        if enc.chunk_frames is not None or enc.positions != "learned" or enc.pool or enc.output_dim is not None:
            raise ValueError("the tokenizer's encoder is a full-window one with learned positions, no AvgPool1d(2) "
                             f"and no projection; got {enc}")
        if self.pool_kernel < 1 or self.codebook_size < 1:
            raise ValueError(f"pool_kernel={self.pool_kernel} and codebook_size={self.codebook_size} must be positive")

    @property
    def samples_per_code(self) -> int:
        """Audio samples per code: conv stride x pool kernel x hop (1280 for the released tokenizer)."""
        return CONV_STRIDE * self.pool_kernel * HOP

    def num_codes(self, n_samples):
        """Codes of a clip of ``n_samples`` 16-kHz samples (int or int array): ceil(L / samples_per_code) for
        each 30-s segment of L samples, summed over the clip's segments (extract_speech_token's count)."""
        n = np.asarray(n_samples, np.int64)
        segment = WINDOW_SECONDS * SAMPLE_RATE  # extract_speech_token cuts clips into 30-s segments
        per_full = -(-segment // self.samples_per_code)
        out = (n // segment) * per_full + -(-(n % segment) // self.samples_per_code)
        return int(out) if out.ndim == 0 else out

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> GLM4VoiceTokenizerConfig:
        """Reads the tokenizer's config.json (a ``WhisperVQConfig``: model_type "whisper" plus the VQ fields),
        refusing by name every attribute it neither implements nor knowingly ignores, and every value of an
        implemented one that the port does not compute."""
        if hf.get("model_type") != "whisper":
            raise UnsupportedConfigError(f"config.json has model_type={hf.get('model_type')!r}; "
                                         "--model=glm4_voice_tokenizer expects 'whisper' (a WhisperVQConfig)")
        problems = []
        missing = [k for k in _REQUIRED if hf.get(k) is None and k != "quantize_vocab_size"]
        if missing:
            problems.append(f"missing attributes {missing}")
        unknown = sorted(set(hf) - _READ - _IGNORED)
        if unknown:
            problems.append(f"unknown attributes {unknown}")
        # Defaults are WhisperVQConfig's / WhisperConfig's own, for a config.json that omits a flag.
        flag = {k: hf.get(k, default) for k, default in _FLAG_DEFAULTS.items()}
        pool = flag["pooling_kernel_size"]
        if pool is not None:  # None: no pooling layer, codes at the conv frame rate
            if flag["pooling_type"] != "avg":
                problems.append(f"pooling_type={flag['pooling_type']!r} is not implemented (expected 'avg')")
            if flag["pooling_position"] != hf.get("quantize_position"):
                problems.append(f"pooling_position={flag['pooling_position']!r} != quantize_position="
                                f"{hf.get('quantize_position')!r} is not implemented (pooling right before the "
                                "quantizer)")
            if not isinstance(pool, int) or pool < 1:
                problems.append(f"pooling_kernel_size={pool!r} is not a positive integer")
        for key in ("encoder_causal_attention", "quantize_causal_encoder"):
            if flag[key]:
                problems.append(f"{key}=True is not implemented (causal attention that drops the padding mask)")
        if flag["scale_embedding"]:
            problems.append("scale_embedding=True is not implemented")
        if flag["activation_function"] != "gelu":
            problems.append(f"activation_function={flag['activation_function']!r} is not implemented "
                            "(expected 'gelu')")
        block = flag["quantize_causal_block_size"]
        if block is not None and (not isinstance(block, int) or block < 1):
            problems.append(f"quantize_causal_block_size={block!r} is not a positive integer (or null)")
        if hf.get("quantize_vocab_size") is None:
            problems.append("quantize_vocab_size=None (no quantizer) is not implemented")
        layers, position = hf.get("encoder_layers"), hf.get("quantize_position")
        if isinstance(layers, int) and isinstance(position, int) and not 1 <= position <= layers:
            problems.append(f"quantize_position={position} is not in 1..encoder_layers={layers}")
        if problems:
            raise UnsupportedConfigError("config.json is not supported by the glm4_voice_tokenizer port: "
                                         + "; ".join(problems))
        encoder = AudioEncoderConfig(
            num_mel_bins=hf["num_mel_bins"], d_model=hf["d_model"], encoder_layers=position,
            encoder_attention_heads=hf["encoder_attention_heads"], encoder_ffn_dim=hf["encoder_ffn_dim"],
            max_source_positions=hf["max_source_positions"], causal_conv=bool(flag["encoder_causal_convolution"]),
            block_size=block, final_norm=False)
        return cls(encoder=encoder, pool_kernel=pool or 1, codebook_size=hf["quantize_vocab_size"])


_REQUIRED = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
             "max_source_positions", "quantize_position", "quantize_vocab_size")
_FLAG_DEFAULTS = {
    "pooling_kernel_size": None, "pooling_type": "max", "pooling_position": 0, "quantize_causal_block_size": None,
    "encoder_causal_convolution": False, "encoder_causal_attention": False, "quantize_causal_encoder": False,
    "scale_embedding": False, "activation_function": "gelu",
}
_READ = frozenset(_REQUIRED) | frozenset(_FLAG_DEFAULTS) | {"model_type"}
# Known and without effect on the codes: the decoder, generation and SpecAugment settings of a Whisper
# config; dropouts; the quantizer's training settings (commitment loss, EMA updates, dead-code restarts);
# quantize_encoder_only (the port is encoder-only whatever it says: layers past quantize_position and the
# final layer_norm never reach the codes); skip_language_detection (decoder generation).
_IGNORED = WHISPER_SKIPPED | ENCODER_IGNORED | {
    "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim", "decoder_layerdrop", "decoder_start_token_id",
    "quantize_commit_coefficient", "quantize_loss_scale", "quantize_ema_decay", "quantize_restart_interval",
    "quantize_encoder_only", "skip_language_detection", "auto_map",
}


def check_inputs(input_features, frames_mask, config: GLM4VoiceTokenizerConfig) -> None:
    """Shapes always; with a concrete mask also its values: a prefix of ones per row, at least one valid frame."""
    enc = config.encoder
    if input_features.ndim != 3:
        raise ValueError(f"input_features has shape {input_features.shape}; expected [segments, mel bins, frames]")
    s, m, f = input_features.shape
    if m != enc.num_mel_bins:
        raise ValueError(f"input_features has {m} mel bins; the tokenizer expects {enc.num_mel_bins}")
    if f % 2 or not 2 <= f <= enc.window_frames:
        raise ValueError(f"input_features has {f} frames; the tokenizer takes an even number from 2 to "
                         f"2 * max_source_positions = {enc.window_frames} (one 30-s segment per row)")
    if frames_mask is None:
        return
    if frames_mask.shape != (s, f):
        raise ValueError(f"frames_mask has shape {frames_mask.shape}; expected {(s, f)} (one flag per mel frame)")
    if not is_concrete(frames_mask):
        return
    mask = np.asarray(frames_mask).astype(np.int64)
    if ((mask != 0) & (mask != 1)).any() or (np.diff(mask, axis=-1) > 0).any():
        raise ValueError("the frame mask is not a prefix of ones in every row; expected right padding "
                         "(the feature extractor's attention_mask)")
    empty = np.flatnonzero(mask.sum(-1) == 0)
    if empty.size:
        raise ValueError(f"segments {empty.tolist()} have no valid mel frame, which gives no speech code "
                         "(empty audio?)")


class GLM4VoiceTokenizer(nn.Module):
    """``encoder`` (:class:`AudioEncoder`, ``quantize_position`` layers) + ``codebook`` [V, D]."""

    config: GLM4VoiceTokenizerConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = AudioEncoder(cfg.encoder, self.dtype)
        self.codebook = self.param("codebook", nn.initializers.normal(1.0), (cfg.codebook_size, cfg.encoder.d_model),
                                   self.dtype)

    def pooled_states(self, input_features, frames_mask=None):
        """input_features [S, M, F], frames_mask [S, F] (1 = valid frame, a prefix of each row; None = all valid)
        -> (pooled pre-quantisation states [S, N, D], valid [S, N] bool)."""
        check_inputs(input_features, frames_mask, self.config)
        h, valid = self.encoder(input_features, frames_mask)  # [S, C, D], [S, C]
        k = self.config.pool_kernel
        s, c, d = h.shape
        # The official code zero-pads the time axis to a multiple of the kernel: the zeros enter the last average.
        h = jnp.pad(h, ((0, 0), (0, (-c) % k), (0, 0)))
        return h.reshape(s, -1, k, d).mean(axis=2), valid[:, ::k]

    def quantize(self, states):
        """states [..., D] -> codes [...] int32: the nearest codebook row by squared L2, the first on ties.

        Distances as the official ``vector_quantize`` writes them (|c|^2 + |x|^2 - 2 x.c), in float32 with full
        matmul precision: a bf16 or TF32 product would move near-ties to another code.
        """
        x = states.astype(jnp.float32)
        c = self.codebook.astype(jnp.float32)
        dots = jnp.einsum("...d,vd->...v", x, c, precision=jax.lax.Precision.HIGHEST)
        dist = (c * c).sum(-1) + (x * x).sum(-1, keepdims=True) - 2.0 * dots
        return jnp.argmin(dist, axis=-1).astype(jnp.int32)

    def __call__(self, input_features, frames_mask=None):
        """input_features [S, M, F], frames_mask [S, F] -> (codes [S, N] int32, valid [S, N] bool), N =
        ceil(ceil(F / 2) / pool_kernel). The codes of a segment are ``codes[i][valid[i]]``; a clip's are its
        segments' in order."""
        states, valid = self.pooled_states(input_features, frames_mask)
        return self.quantize(states), valid


def rules(config: GLM4VoiceTokenizerConfig) -> tuple[Rule, ...]:
    """The released layout: encoder keys without prefix (``conv1.weight``, ``layers.{i}.fc1.weight``, ...),
    ``codebook.weight`` [V, D]; no final ``layer_norm``."""
    return encoder_rules("", "encoder/", config.encoder) + (Rule("codebook.weight", "codebook"),)


IGNORE = ("ema_count", "ema_weight", "embed_positions2.weight")


def init_inputs(config: GLM4VoiceTokenizerConfig) -> dict[str, Any]:
    """Two mel frames (one code): every parameter's shape depends on the config only."""
    m = config.encoder.num_mel_bins
    return {"input_features": jnp.zeros((1, m, 2), jnp.float32), "frames_mask": jnp.ones((1, 2), jnp.int32)}
