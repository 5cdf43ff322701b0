"""Qwen2-Audio (transformers' ``Qwen2AudioForConditionalGeneration``, e.g. Qwen2-Audio-7B-Instruct) in Flax linen.

One clip per 30-s window (the processor pads every clip to 3000 mel frames and cuts what is longer; the port
refuses it instead, :func:`ports.features.qwen2_audio`) -> the Whisper-large-v3-style encoder with the keys past
the clip's frames masked -> AvgPool1d(2) -> LayerNorm -> one Linear (d_model -> H, with bias) -> the audio tokens
replace the ``<|AUDIO|>`` placeholders (``((frames - 1) // 2 + 1 - 2) // 2 + 1`` per clip, as the processor
counts them) -> the shared decoder (Qwen2, plain 1-D RoPE).

transformers' legacy path (a single ``<|AUDIO|>`` per clip, expanded inside the model) is not ported: the prompt
must hold one placeholder per audio token, as the processor writes it (:mod:`ports.prompts`).

Shapes: B = prompts, T = prompt tokens, C = clips, M = mel bins, F = mel frames (3000, or a window cut at
least 2 frames after every clip's end), H = hidden size, V = vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ports import lalm
from ports.audio import AudioEncoderConfig, check_clip_frames, encoder_config_from_hf
from ports.config import Config, DecoderConfig, UnsupportedConfigError
from ports.lalm import SplicedLALM, dense_rules, text_config_from_hf, text_config_to_hf
from ports.rules import Rule

MODEL_TYPE, ENCODER_TYPE = "qwen2_audio", "qwen2_audio_encoder"
AUDIO_TOKEN_ID = 151646  # <|AUDIO|> in Qwen2-Audio's tokenizer (transformers' default audio_token_index)
_AUDIO_NAMES = {f: f for f in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
                               "encoder_ffn_dim", "max_source_positions")}
# vocab_size: a copy of text_config's, which the decoder reads.
_USED = frozenset({"model_type", "audio_config", "text_config", "audio_token_index", "audio_token_id", "vocab_size"})
# transformers builds text_config as a Qwen2Config, whose defaults fill what the hub's config.json leaves out (the
# released 7B gives neither hidden_size nor the layer and head counts).
QWEN2_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}


@dataclasses.dataclass(frozen=True)
class Qwen2AudioConfig(Config):
    audio: AudioEncoderConfig
    text: DecoderConfig
    audio_token_id: int = AUDIO_TOKEN_ID

    def __post_init__(self):
        lalm.check_full_window(self.audio, True, "Qwen2-Audio")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> Qwen2AudioConfig:
        """Reads the hub checkpoint's config.json, refusing what the port does not implement."""
        lalm.check_model_type(hf, MODEL_TYPE, "qwen2_audio")
        text = {**QWEN2_DEFAULTS, **hf["text_config"]}
        problems = []
        if text.pop("use_mrope", False):  # Qwen2-VL's multimodal RoPE, which Qwen2-Audio never switches on
            problems.append("text_config use_mrope=True is not implemented")
        lalm.refuse(problems, lalm.unknown_top_level(hf, _USED), "qwen2_audio")
        audio = dict(hf["audio_config"])
        if audio.get("model_type", ENCODER_TYPE) != ENCODER_TYPE:
            raise UnsupportedConfigError(f"audio_config has model_type={audio['model_type']!r}; the qwen2_audio port "
                                         f"implements {ENCODER_TYPE!r}")
        audio = encoder_config_from_hf(audio, names=_AUDIO_NAMES, extra={"pool": True}, what="audio_config")
        token = hf.get("audio_token_index", hf.get("audio_token_id", AUDIO_TOKEN_ID))
        return cls(audio=audio, text=text_config_from_hf(text), audio_token_id=token)

    def to_hf(self) -> dict[str, Any]:
        """transformers' ``Qwen2AudioConfig`` dict: the inverse of :meth:`from_hf` (a tied language model is
        written untied, its embedding copied into the head: see :func:`ports.lalm.rules`)."""
        return {"model_type": MODEL_TYPE, "architectures": ["Qwen2AudioForConditionalGeneration"],
                "audio_config": {"model_type": ENCODER_TYPE, **{f: getattr(self.audio, f) for f in _AUDIO_NAMES}},
                "text_config": text_config_to_hf(self.text), "audio_token_index": self.audio_token_id}


class Qwen2Audio(SplicedLALM):
    """``audio_tower`` + ``multi_modal_projector`` (one Linear) + ``language_model`` (the shared decoder)."""

    config: Qwen2AudioConfig
    PLACEHOLDER = "<|AUDIO|> placeholders"

    def projector(self):
        return _Linear(self.config.text.hidden_size, self.dtype)

    def embed_inputs(self, input_ids, input_features=None, feature_attention_mask=None):
        """input_ids [B, T]; input_features [C, M, F] with feature_attention_mask [C, F] (1 = valid frame, right
        padding; one clip per prompt as the processor makes them, or several in prompt order) -> [B, T, H]."""
        if input_features is None:
            return self.splice_audio(input_ids)
        if feature_attention_mask is None:
            raise ValueError("feature_attention_mask [C, F] is required with input_features (the frame mask the "
                             "feature extractor returns)")
        check_clip_frames(feature_attention_mask, self.config.audio)
        return self.splice_audio(input_ids, *self.audio_embeds(input_features, feature_attention_mask))

    def __call__(self, input_ids=None, input_features=None, feature_attention_mask=None, attention_mask=None,
                 position_ids=None, inputs_embeds=None, interventions=None, logits_positions=None, prefix=None):
        """Logits [B, T, V] (or [B, S, V] at ``logits_positions``). ``inputs_embeds`` skips the encoder; other
        arguments as the shared decoder."""
        return self.decode(input_ids, inputs_embeds, dict(input_features=input_features,
                                                          feature_attention_mask=feature_attention_mask),
                           attention_mask, position_ids, interventions, logits_positions, prefix)


class _Linear(nn.Module):
    """Qwen2-Audio's projector: ``linear`` (D -> H, with bias)."""

    hidden_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="linear")(x)


def rules(config: Qwen2AudioConfig) -> tuple[Rule, ...]:
    return lalm.rules(config, dense_rules("multi_modal_projector.linear", "multi_modal_projector/linear", True))


def init_inputs(config) -> dict[str, Any]:
    return lalm.one_window_inputs(config, "feature_attention_mask")
