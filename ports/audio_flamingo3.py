"""Audio Flamingo 3 (transformers' ``AudioFlamingo3ForConditionalGeneration``) in Flax linen.

Whisper-large-v3-style encoder over 30-s windows (full attention inside a window, the keys past a
partial window's end masked) -> AvgPool1d(2) -> LayerNorm -> projector Linear -> GELU -> Linear ->
the audio tokens replace the ``<sound>`` placeholders -> the shared decoder (plain 1-D RoPE).

Shapes: B = prompts, T = prompt tokens, W = windows (all clips' windows, in order), M = mel bins,
F = mel frames per window (2 * max_source_positions), H = hidden size, V = vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ports import lalm
from ports.audio import AudioEncoderConfig, check_clip_frames, encoder_config_from_hf
from ports.config import Config, DecoderConfig, UnsupportedConfigError
from ports.lalm import Projector, SplicedLALM, text_config_from_hf, text_config_to_hf
from ports.rules import Rule

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
        if hf.get("projector_hidden_act", "gelu") != "gelu":
            problems.append(f"projector_hidden_act={hf['projector_hidden_act']!r} is not implemented (expected "
                            "'gelu')")
        lalm.refuse(problems, lalm.unknown_top_level(hf, _USED), "audio_flamingo3")
        audio = encoder_config_from_hf(hf["audio_config"], names=_AUDIO_NAMES, extra={"pool": True},
                                       what="audio_config")
        # a Qwen2 language model (the released 7B) or a Llama one
        return cls(audio=audio, text=text_config_from_hf(hf["text_config"]),
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
        return {"model_type": MODEL_TYPE, "architectures": ["AudioFlamingo3ForConditionalGeneration"],
                "audio_config": {"model_type": "audioflamingo3_encoder",
                                 **{hf: getattr(a, ours) for ours, hf in _AUDIO_NAMES.items()}},
                "text_config": text_config_to_hf(self.text), "audio_token_id": self.audio_token_id,
                "projector_hidden_act": "gelu", "projector_bias": self.projector_bias}


class AudioFlamingo3(SplicedLALM):
    """``audio_tower`` + ``multi_modal_projector`` + ``language_model`` (the shared decoder)."""

    config: AudioFlamingo3Config
    PLACEHOLDER = "<sound> placeholders"

    def projector(self):
        return Projector(self.config.text.hidden_size, self.config.projector_bias, self.dtype)

    def embed_inputs(self, input_ids, input_features=None, input_features_mask=None):
        """input_ids [B, T]; input_features [W, M, F] and input_features_mask [W, F] (1 = valid frame) for
        every clip's windows in prompt order -> inputs_embeds [B, T, H]."""
        if input_features is None:
            return self.splice_audio(input_ids)
        if input_features_mask is None:
            raise ValueError("input_features_mask [W, F] is required with input_features (the frame mask the "
                             "feature extractor returns)")
        check_clip_frames(input_features_mask, self.config.audio, what="window")
        return self.splice_audio(input_ids, *self.audio_embeds(input_features, input_features_mask))

    def __call__(self, input_ids=None, input_features=None, input_features_mask=None, attention_mask=None,
                 position_ids=None, inputs_embeds=None, interventions=None, logits_positions=None, prefix=None):
        """Logits [B, T, V] (or [B, S, V] at ``logits_positions``). ``inputs_embeds`` skips the encoder; other
        arguments as the shared decoder."""
        return self.decode(input_ids, inputs_embeds, dict(input_features=input_features,
                                                          input_features_mask=input_features_mask),
                           attention_mask, position_ids, interventions, logits_positions, prefix)


def rules(config: AudioFlamingo3Config) -> tuple[Rule, ...]:
    return lalm.rules(config, lalm.projector_rules(config.projector_bias))


def init_inputs(config) -> dict[str, Any]:
    return lalm.one_window_inputs(config, "input_features_mask")
