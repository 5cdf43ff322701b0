"""Voxtral (transformers' ``VoxtralForConditionalGeneration``, e.g. Voxtral-Mini-3B-2507) in Flax linen.

Every clip is padded to whole 30-s windows (3000 mel frames each, :func:`ports.features.voxtral`) -> the
Whisper encoder over each window with nothing masked (padding frames are attended, as transformers does) and
no pooling -> LayerNorm -> the adapter stacks ``k = intermediate_size / hidden_size`` consecutive frames
([W, S, D] -> [W, S / k, k * D]; 4 in the released model: 375 tokens per window) -> Linear (no bias) -> GELU
-> Linear (no bias) -> the audio tokens replace the ``[AUDIO]`` placeholders, all of every window in prompt
order -> the shared decoder (Llama, plain 1-D RoPE).

Shapes: B = prompts, T = prompt tokens, W = windows (all clips' windows, in order), M = mel bins,
F = mel frames per window (2 * max_source_positions), S = F / 2, H = hidden size, V = vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from ports import lalm
from ports.audio import AudioEncoderConfig, encoder_config_from_hf
from ports.config import Config, DecoderConfig, UnsupportedConfigError
from ports.lalm import Projector, SplicedLALM, text_config_from_hf, text_config_to_hf
from ports.rules import Rule

MODEL_TYPE, ENCODER_TYPE = "voxtral", "voxtral_encoder"
AUDIO_TOKEN_ID = 24  # [AUDIO] in Voxtral's tekken tokenizer (VoxtralProcessor's audio_token_id)
# Our field -> the attribute transformers' VoxtralEncoderConfig stores; its attribute_map gives the Whisper aliases.
_AUDIO_NAMES = {"num_mel_bins": "num_mel_bins", "d_model": "hidden_size", "encoder_layers": "num_hidden_layers",
                "encoder_attention_heads": "num_attention_heads", "encoder_ffn_dim": "intermediate_size",
                "max_source_positions": "max_source_positions"}
_ALIASES = {"d_model": "hidden_size", "encoder_layers": "num_hidden_layers",
            "encoder_attention_heads": "num_attention_heads", "encoder_ffn_dim": "intermediate_size",
            "encoder_layerdrop": "layerdrop"}
# The Whisper decoder's vocabulary (unused by an encoder); head_dim and num_key_value_heads are checked below.
_AUDIO_IGNORED = frozenset({"vocab_size", "head_dim", "num_key_value_heads"})
# hidden_size and vocab_size: transformers' copies of text_config's, which the decoder reads.
_USED = frozenset({"model_type", "audio_config", "text_config", "audio_token_id", "projector_hidden_act",
                   "hidden_size", "vocab_size"})

# transformers' VoxtralConfig fills what text_config leaves out with these (then LlamaConfig's defaults).
VOXTRAL_TEXT_DEFAULTS = {"vocab_size": 131072, "hidden_size": 3072, "intermediate_size": 8192,
                         "num_hidden_layers": 30, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
                         "rope_theta": 1e8, "head_dim": 128}


@dataclasses.dataclass(frozen=True)
class VoxtralConfig(Config):
    audio: AudioEncoderConfig
    text: DecoderConfig
    audio_token_id: int = AUDIO_TOKEN_ID

    def __post_init__(self):
        lalm.check_full_window(self.audio, False, "Voxtral")
        a = self.audio
        k = a.encoder_ffn_dim // a.d_model
        if a.encoder_ffn_dim % a.d_model or a.max_source_positions % k:
            raise ValueError(f"the adapter stacks intermediate_size / hidden_size = {a.encoder_ffn_dim} / {a.d_model} "
                             f"frames per token; it must be a whole number dividing max_source_positions="
                             f"{a.max_source_positions}, or the tokens would straddle frames or windows")

    @property
    def frames_per_token(self) -> int:
        """k: consecutive encoder frames the adapter stacks into one audio token."""
        return self.audio.encoder_ffn_dim // self.audio.d_model

    @property
    def tokens_per_window(self) -> int:
        return self.audio.max_source_positions // self.frames_per_token

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> VoxtralConfig:
        """Reads the hub checkpoint's config.json, refusing what the port does not implement."""
        lalm.check_model_type(hf, MODEL_TYPE, "voxtral")
        problems = []
        if hf.get("projector_hidden_act", "gelu") != "gelu":
            problems.append(f"projector_hidden_act={hf['projector_hidden_act']!r} is not implemented (expected "
                            "'gelu')")
        audio = {_ALIASES.get(k, k): v for k, v in hf["audio_config"].items()}
        if audio.get("model_type", ENCODER_TYPE) != ENCODER_TYPE:
            problems.append(f"audio_config model_type={audio['model_type']!r} (expected {ENCODER_TYPE!r})")
        heads = audio.get("num_attention_heads")
        if audio.get("num_key_value_heads", heads) != heads:
            problems.append(f"audio_config num_key_value_heads={audio['num_key_value_heads']} != num_attention_heads="
                            f"{heads} is not implemented")
        if heads and "hidden_size" in audio and audio.get("head_dim", audio["hidden_size"] // heads) * heads != \
                audio["hidden_size"]:
            problems.append(f"audio_config head_dim={audio['head_dim']} is not hidden_size / num_attention_heads")
        lalm.refuse(problems, lalm.unknown_top_level(hf, _USED), "voxtral")
        encoder = encoder_config_from_hf(audio, names=_AUDIO_NAMES, ignored=_AUDIO_IGNORED, extra={},
                                         what="audio_config")
        text = text_config_from_hf({"model_type": "llama", **VOXTRAL_TEXT_DEFAULTS, **hf["text_config"]})
        try:
            return cls(audio=encoder, text=text, audio_token_id=hf.get("audio_token_id", AUDIO_TOKEN_ID))
        except ValueError as e:  # the adapter's stacking (__post_init__)
            raise UnsupportedConfigError(f"audio_config is not supported by the voxtral port: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        """transformers' ``VoxtralConfig`` dict: the inverse of :meth:`from_hf` (a tied language model is written
        untied, its embedding copied into the head: see :func:`ports.lalm.rules`)."""
        audio = {hf: getattr(self.audio, ours) for ours, hf in _AUDIO_NAMES.items()}
        return {"model_type": MODEL_TYPE, "architectures": ["VoxtralForConditionalGeneration"],
                "audio_config": {"model_type": ENCODER_TYPE, **audio}, "text_config": text_config_to_hf(self.text),
                "audio_token_id": self.audio_token_id, "projector_hidden_act": "gelu"}


class Voxtral(SplicedLALM):
    """``audio_tower`` + ``multi_modal_projector`` (frame stacking, Linear, GELU, Linear) + ``language_model``."""

    config: VoxtralConfig
    PLACEHOLDER = "[AUDIO] placeholders"

    def projector(self):
        return Projector(self.config.text.hidden_size, bias=False, dtype=self.dtype)

    def audio_embeds(self, input_features, frames_mask=None):
        """input_features [W, M, F] -> (audio [W, S / k, H], valid [W, S / k], all True): k frames per token."""
        audio, _ = self.audio_tower(input_features)
        w, s, d = audio.shape
        k = self.config.frames_per_token
        stacked = self.multi_modal_projector(audio.reshape(w, s // k, k * d))
        return stacked, jnp.ones(stacked.shape[:2], bool)

    def embed_inputs(self, input_ids, input_features=None):
        """input_ids [B, T]; input_features [W, M, F] (every clip's 30-s windows in prompt order, F the full
        window: Voxtral masks nothing, so a cut window would change every token) -> inputs_embeds [B, T, H]."""
        if input_features is None:
            return self.splice_audio(input_ids)
        frames = self.config.audio.window_frames
        if input_features.ndim != 3 or input_features.shape[-1] != frames:
            raise ValueError(f"input_features has shape {tuple(input_features.shape)}; Voxtral takes [W, "
                             f"{self.config.audio.num_mel_bins}, {frames}]: every clip padded to whole 30-s windows "
                             "(ports.features.voxtral)")
        return self.splice_audio(input_ids, *self.audio_embeds(input_features))

    def __call__(self, input_ids=None, input_features=None, attention_mask=None, position_ids=None,
                 inputs_embeds=None, interventions=None, logits_positions=None, prefix=None):
        """Logits [B, T, V] (or [B, S, V] at ``logits_positions``). ``inputs_embeds`` skips the encoder; other
        arguments as the shared decoder."""
        return self.decode(input_ids, inputs_embeds, dict(input_features=input_features), attention_mask,
                           position_ids, interventions, logits_positions, prefix)


def rules(config: VoxtralConfig) -> tuple[Rule, ...]:
    return lalm.rules(config, lalm.projector_rules(bias=False))


def init_inputs(config: VoxtralConfig) -> dict[str, Any]:
    """One window at one window's placeholders: creates every parameter."""
    return {"input_ids": jnp.full((1, config.tokens_per_window), config.audio_token_id, jnp.int32),
            "input_features": jnp.zeros((1, config.audio.num_mel_bins, config.audio.window_frames), jnp.float32)}
