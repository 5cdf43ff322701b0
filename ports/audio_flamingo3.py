"""Audio Flamingo 3 (transformers' ``AudioFlamingo3ForConditionalGeneration``) in Flax linen.

Whisper-large-v3-style encoder over 30-s windows (full attention inside a window, the keys past a
partial window's end masked) -> AvgPool1d(2) -> LayerNorm -> projector Linear -> GELU -> Linear ->
the audio tokens replace the ``<sound>`` placeholders -> the shared decoder (plain 1-D RoPE).

Shapes: B = prompts, T = prompt tokens, W = windows (all clips' windows, in order), M = mel bins,
F = mel frames per window (2 * max_source_positions), H = hidden size, V = vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ports.audio import (
    HF_BOOKKEEPING,
    LINEAR,
    NONE,
    AudioEncoder,
    AudioEncoderConfig,
    check_clip_frames,
    encoder_config_from_hf,
    encoder_rules,
    is_concrete,
    splice,
)
from ports.config import FAMILIES, Config, DecoderConfig, UnsupportedConfigError
from ports.decoder import Qwen2ForCausalLM
from ports.rules import Rule, attention_biases, decoder_rules

MODEL_TYPE = "audioflamingo3"
_AUDIO_NAMES = {"num_mel_bins": "num_mel_bins", "d_model": "hidden_size", "encoder_layers": "num_hidden_layers",
                "encoder_attention_heads": "num_attention_heads", "encoder_ffn_dim": "intermediate_size",
                "max_source_positions": "max_source_positions"}
_USED = frozenset({"model_type", "audio_config", "text_config", "audio_token_id", "projector_hidden_act",
                   "projector_bias"})


@dataclasses.dataclass(frozen=True)
class AudioFlamingo3Config(Config):
    audio: AudioEncoderConfig
    text: DecoderConfig
    audio_token_id: int = 151669
    projector_bias: bool = True

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> AudioFlamingo3Config:
        """Reads the ``-hf`` checkpoint's config.json, refusing what the port does not implement."""
        if hf.get("model_type") != MODEL_TYPE:
            raise UnsupportedConfigError(f"config.json has model_type={hf.get('model_type')!r}; "
                                         f"--model=audio_flamingo3 expects {MODEL_TYPE!r} (the -hf checkpoint)")
        problems = []
        unknown = sorted(set(hf) - _USED - HF_BOOKKEEPING)
        if unknown:
            problems.append(f"unknown attributes {unknown}")
        if hf.get("projector_hidden_act", "gelu") != "gelu":
            problems.append(f"projector_hidden_act={hf['projector_hidden_act']!r} is not implemented (expected "
                            "'gelu')")
        if problems:
            raise UnsupportedConfigError("config.json is not supported by the audio_flamingo3 port: "
                                         + "; ".join(problems))
        audio = encoder_config_from_hf(hf["audio_config"], names=_AUDIO_NAMES, extra={"pool": True},
                                       what="audio_config")
        text = hf["text_config"]  # a Qwen2 language model (the released 7B) or a Llama one
        family = text.get("model_type") if text.get("model_type") in FAMILIES else "qwen2"
        # transformers' AF3 class always has its own lm_head, whatever text_config says about tying.
        text = {**text, "tie_word_embeddings": False}
        return cls(audio=audio, text=DecoderConfig.from_hf(text, family),
                   audio_token_id=hf.get("audio_token_id", 151669), projector_bias=hf.get("projector_bias", True))

    def to_hf(self) -> dict[str, Any]:
        """transformers' ``AudioFlamingo3Config`` dict: the inverse of :meth:`from_hf` up to tying.

        transformers' AF3 always has its own lm_head, so a tied language model is written untied and
        :func:`rules` copies its embedding into the head; reading the export back gives the untied model
        that computes the same logits.
        """
        a = self.audio
        if a.chunk_frames is not None or a.positions != "learned" or not a.pool or a.output_dim is not None:
            raise UnsupportedConfigError("cannot export as Audio Flamingo 3: the audio encoder is not AF3's (full "
                                         "windows, learned positions, pooled, no projection)")
        text = {k: v for k, v in self.text.to_hf().items() if k != "architectures"}
        return {"model_type": MODEL_TYPE, "architectures": ["AudioFlamingo3ForConditionalGeneration"],
                "audio_config": {"model_type": "audioflamingo3_encoder",
                                 **{hf: getattr(a, ours) for ours, hf in _AUDIO_NAMES.items()}},
                "text_config": {**text, "tie_word_embeddings": False}, "audio_token_id": self.audio_token_id,
                "projector_hidden_act": "gelu", "projector_bias": self.projector_bias}


class Projector(nn.Module):
    """linear_1 (D -> H) -> exact GELU -> linear_2 (H -> H)."""

    hidden_size: int
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, self.hidden_size, use_bias=self.bias, dtype=self.dtype,
                                  param_dtype=self.dtype)
        return dense(name="linear_2")(jax.nn.gelu(dense(name="linear_1")(x), approximate=False))


class AudioFlamingo3(nn.Module):
    """``audio_tower`` + ``multi_modal_projector`` + ``language_model`` (the shared decoder)."""

    config: AudioFlamingo3Config
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.audio_tower = AudioEncoder(cfg.audio, self.dtype)
        self.multi_modal_projector = Projector(cfg.text.hidden_size, cfg.projector_bias, self.dtype)
        self.language_model = Qwen2ForCausalLM(cfg.text, self.dtype)

    def embed_answer(self, answer_ids):
        """answer_ids [B, M] -> [B, M, H] (see :meth:`ports.decoder.Qwen2ForCausalLM.embed_answer`)."""
        return self.language_model.embed_answer(answer_ids)

    def embed_inputs(self, input_ids, input_features=None, input_features_mask=None):
        """input_ids [B, T]; input_features [W, M, F] and input_features_mask [W, F] (1 = valid frame) for
        every clip's windows in prompt order -> inputs_embeds [B, T, H]."""
        embeds = self.language_model.embed_inputs(input_ids)
        placeholders = input_ids == self.config.audio_token_id
        if input_features is None:
            if is_concrete(input_ids) and np.asarray(placeholders).any():
                raise ValueError("input_ids hold <sound> placeholders but no input_features were given")
            return embeds
        if input_features_mask is None:
            raise ValueError("input_features_mask [W, F] is required with input_features (the frame mask the "
                             "feature extractor returns)")
        check_clip_frames(input_features_mask, self.config.audio, what="window")
        audio, valid = self.audio_tower(input_features, input_features_mask)
        return splice(embeds, placeholders, self.multi_modal_projector(audio), valid, "<sound> placeholders")

    def __call__(self, input_ids=None, input_features=None, input_features_mask=None, attention_mask=None,
                 position_ids=None, inputs_embeds=None, interventions=None, logits_positions=None, prefix=None):
        """Logits [B, T, V] (or [B, S, V] at ``logits_positions``). ``inputs_embeds`` skips the encoder; other
        arguments as the shared decoder."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids [B, T] (with the audio inputs) or inputs_embeds [B, T, H]")
            inputs_embeds = self.embed_inputs(input_ids, input_features, input_features_mask)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, interventions=interventions,
                                   logits_positions=logits_positions, prefix=prefix)


def rules(config: AudioFlamingo3Config) -> tuple[Rule, ...]:
    projector = []
    for name in ("linear_1", "linear_2"):
        projector.append(Rule(f"multi_modal_projector.{name}.weight", f"multi_modal_projector/{name}/kernel",
                              **LINEAR))
        if config.projector_bias:
            projector.append(Rule(f"multi_modal_projector.{name}.bias", f"multi_modal_projector/{name}/bias",
                                  **NONE))
    # transformers' AF3 always has its own lm_head: a tied language model exports its embedding there as well
    # (export only: :meth:`AudioFlamingo3Config.from_hf` never reads a tied model).
    head = ((Rule("language_model.lm_head.weight", "language_model/model/embed_tokens/embedding"),)
            if config.text.tie_word_embeddings else ())
    return (decoder_rules("language_model.model", "language_model.lm_head", "language_model/",
                          attention_biases(config.text)) + head
            + encoder_rules("audio_tower", "audio_tower/", config.audio) + tuple(projector))


def init_inputs(config: AudioFlamingo3Config) -> dict[str, Any]:
    """One window with 4 valid frames (one audio token) at one placeholder: creates every parameter."""
    frames = config.audio.window_frames
    return {"input_ids": jnp.full((1, 1), config.audio_token_id, jnp.int32),
            "input_features": jnp.zeros((1, config.audio.num_mel_bins, frames), jnp.float32),
            "input_features_mask": (jnp.arange(frames) < 4)[None].astype(jnp.int32)}
