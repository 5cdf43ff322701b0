"""Qwen2.5-Omni's thinker (audio + text in, text out) in Flax linen: audio tower -> splice -> shared decoder.

The vision tower, the talker and token2wav are not ported (the study feeds audio and text only).
With audio and text alone, Omni's M-RoPE gives three identical position rows, which is exactly 1-D RoPE
over ``cumsum(attention_mask) - 1`` — the shared decoder's default positions.

Shapes: B = prompts, T = prompt tokens, M = mel bins, F = mel frames, H = hidden size, V = vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ports.audio import (
    HF_BOOKKEEPING,
    AudioEncoder,
    AudioEncoderConfig,
    check_clip_frames,
    encoder_config_from_hf,
    encoder_rules,
    is_concrete,
    splice,
)
from ports.config import Config, DecoderConfig, UnsupportedConfigError
from ports.decoder import Qwen2ForCausalLM
from ports.rules import Rule, decoder_rules

FULL, THINKER = "qwen2_5_omni", "qwen2_5_omni_thinker"
# The thinker's own flag; the text config's tie_word_embeddings is the one the decoder reads.
_BOOKKEEPING = HF_BOOKKEEPING | {"tie_word_embeddings"}
# The parts of a hub config.json that belong to modules the port leaves out (see the module docstring).
_FULL_SKIPPED = frozenset({"talker_config", "token2wav_config", "enable_audio_output", "enable_talker"})
_THINKER_SKIPPED = frozenset({
    "vision_config", "image_token_index", "video_token_index", "vision_start_token_id", "vision_end_token_id",
    "vision_token_id", "position_id_per_seconds", "seconds_per_chunk", "user_token_id",
})
_THINKER_USED = frozenset({"model_type", "audio_config", "text_config", "audio_token_index",
                           "audio_start_token_id", "audio_end_token_id"})
# Omni's text config adds these to Qwen2's; none changes an audio+text forward pass.
_TEXT_EXTRA_IGNORED = ("init_std", "rope_scaling")
_AUDIO_NAMES = {"num_mel_bins": "num_mel_bins", "d_model": "d_model", "encoder_layers": "encoder_layers",
                "encoder_attention_heads": "encoder_attention_heads", "encoder_ffn_dim": "encoder_ffn_dim",
                "max_source_positions": "max_source_positions", "output_dim": "output_dim"}


@dataclasses.dataclass(frozen=True)
class Qwen2_5OmniConfig(Config):
    """The thinker without vision. ``hf_prefix`` is where the thinker's tensors sit in the source
    checkpoint (``thinker.`` in the hub's full model, empty for a ``save_pretrained`` thinker); the
    forward pass does not use it."""

    audio: AudioEncoderConfig
    text: DecoderConfig
    audio_token_id: int = 151646
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    hf_prefix: str = "thinker."

    def __post_init__(self):
        if self.audio.out_width != self.text.hidden_size:
            raise ValueError(f"audio output_dim={self.audio.out_width} != text hidden_size={self.text.hidden_size}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> Qwen2_5OmniConfig:
        """Reads the hub's full ``qwen2_5_omni`` config.json (its ``thinker_config``) or a bare thinker's."""
        model_type = hf.get("model_type")
        if model_type == FULL:
            _refuse_unknown(hf, {"model_type", "thinker_config"} | _FULL_SKIPPED | _BOOKKEEPING, "config.json")
            thinker, prefix = hf["thinker_config"], "thinker."
        elif model_type == THINKER:
            thinker, prefix = hf, ""
        else:
            raise UnsupportedConfigError(
                f"config.json has model_type={model_type!r}; --model=qwen2_5_omni expects {FULL!r} (the hub "
                f"checkpoint) or {THINKER!r} (a saved thinker)")
        _refuse_unknown(thinker, _THINKER_USED | _THINKER_SKIPPED | _BOOKKEEPING, "thinker_config")
        text = {k: v for k, v in thinker["text_config"].items() if k not in _TEXT_EXTRA_IGNORED}
        rope = {**(thinker["text_config"].get("rope_scaling") or {}), **(text.get("rope_parameters") or {})}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise UnsupportedConfigError(f"text_config rope type {rope.get('rope_type')!r} is not implemented")
        text_cfg = DecoderConfig.from_hf(text, "qwen2_5_omni_text")
        if "mrope_section" in rope and 2 * sum(rope["mrope_section"]) != text_cfg.head_dim:
            raise UnsupportedConfigError(f"mrope_section={rope['mrope_section']} does not cover head_dim="
                                         f"{text_cfg.head_dim}; M-RoPE would not reduce to 1-D RoPE")
        audio_hf = thinker["audio_config"]
        audio = encoder_config_from_hf(audio_hf, names=_AUDIO_NAMES, ignored=frozenset({"n_window"}),
                                       extra={"chunk_frames": 2 * audio_hf["n_window"], "positions": "sinusoidal",
                                              "pool": True}, what="audio_config")
        return cls(audio=audio, text=text_cfg, audio_token_id=thinker.get("audio_token_index", 151646),
                   audio_start_token_id=thinker.get("audio_start_token_id", 151647),
                   audio_end_token_id=thinker.get("audio_end_token_id", 151648), hf_prefix=prefix)

    def to_hf(self) -> dict[str, Any]:
        """A bare thinker's config.json (``Qwen2_5OmniThinkerConfig``; the inverse of :meth:`from_hf`).

        Only the thinker layout is written (``hf_prefix=""``: keys without ``thinker.``); the hub's full
        model would need the talker and token2wav, which the port lacks.
        """
        a, t = self.audio, self.text
        problems = []
        if self.hf_prefix:
            problems.append(f"hf_prefix={self.hf_prefix!r} (export the bare thinker: dataclasses.replace(config, "
                            "hf_prefix=''))")
        if a.chunk_frames is None or a.positions != "sinusoidal" or not a.pool or a.output_dim is None:
            problems.append("the audio encoder is not Omni's (chunked, sinusoidal positions, pooled, projected)")
        if t.head_dim * t.num_attention_heads != t.hidden_size:
            problems.append(f"head_dim={t.head_dim} != hidden_size / num_attention_heads (Omni's text config "
                            "has no head_dim)")
        if problems:
            raise UnsupportedConfigError("cannot export as a Qwen2.5-Omni thinker: " + "; ".join(problems))
        text = {k: v for k, v in t.to_hf().items() if k not in ("architectures", "head_dim")}
        half = t.head_dim // 2
        # Any split of the rotary half into M-RoPE's (temporal, height, width) sections is 1-D RoPE for
        # audio + text (module docstring); this one scales the hub's [16, 24, 24] of 64.
        section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
        text |= {"model_type": "qwen2_5_omni_text",
                 "rope_parameters": {**text["rope_parameters"], "mrope_section": section}}
        audio = {"model_type": "qwen2_5_omni_audio_encoder", "n_window": a.chunk_frames // 2,
                 **{hf: getattr(a, ours) for ours, hf in _AUDIO_NAMES.items()}}
        return {"model_type": THINKER, "architectures": ["Qwen2_5OmniThinkerForConditionalGeneration"],
                "audio_config": audio, "text_config": text, "vision_config": _vision_stub(t.hidden_size),
                "audio_token_index": self.audio_token_id, "audio_start_token_id": self.audio_start_token_id,
                "audio_end_token_id": self.audio_end_token_id, **_VISION_IDS,
                "tie_word_embeddings": t.tie_word_embeddings}


# transformers builds a vision tower from vision_config (the hub's default is ~670M parameters); an export
# has no vision weights, so a one-block stub keeps loading cheap (its random weights see no audio+text input).
def _vision_stub(out_hidden_size: int) -> dict[str, Any]:
    return {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
            "out_hidden_size": out_hidden_size, "fullatt_block_indexes": [0]}


# The hub's vision token ids. transformers' position ids (get_rope_index) read them; no audio+text prompt
# holds them (in a small vocabulary they lie past its end).
_VISION_IDS = {"image_token_index": 151655, "video_token_index": 151656, "vision_start_token_id": 151652}


def _refuse_unknown(hf: Mapping[str, Any], known: frozenset[str] | set[str], what: str) -> None:
    unknown = sorted(set(hf) - set(known))
    if unknown:
        raise UnsupportedConfigError(f"{what} has attributes the qwen2_5_omni port does not know: {unknown}")


class Qwen2_5OmniThinker(nn.Module):
    """``audio_tower`` (chunked Whisper-style encoder) + ``language_model`` (the shared decoder)."""

    config: Qwen2_5OmniConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.audio_tower = AudioEncoder(self.config.audio, self.dtype)
        self.language_model = Qwen2ForCausalLM(self.config.text, self.dtype)

    def embed_answer(self, answer_ids):
        """answer_ids [B, M] -> [B, M, H] (see :meth:`ports.decoder.Qwen2ForCausalLM.embed_answer`)."""
        return self.language_model.embed_answer(answer_ids)

    def embed_inputs(self, input_ids, input_features=None, feature_attention_mask=None):
        """input_ids [B, T]; input_features [C, M, F] with feature_attention_mask [C, F] (1 = valid frame,
        right-padded; C clips, usually one per prompt) -> inputs_embeds [B, T, H].

        The clips' audio tokens replace the ``<|AUDIO|>`` positions in order (as transformers does).
        """
        embeds = self.language_model.embed_inputs(input_ids)
        placeholders = input_ids == self.config.audio_token_id
        if input_features is None:
            if is_concrete(input_ids) and np.asarray(placeholders).any():
                raise ValueError("input_ids hold <|AUDIO|> placeholders but no input_features were given")
            return embeds
        if feature_attention_mask is None:
            raise ValueError("feature_attention_mask [C, F] is required with input_features (the frame mask "
                             "the feature extractor returns)")
        check_clip_frames(feature_attention_mask, self.config.audio)
        audio, valid = self.audio_tower(input_features, feature_attention_mask)
        return splice(embeds, placeholders, audio, valid, "<|AUDIO|> placeholders")

    def __call__(self, input_ids=None, input_features=None, feature_attention_mask=None, attention_mask=None,
                 position_ids=None, inputs_embeds=None, interventions=None, logits_positions=None, prefix=None):
        """Logits [B, T, V] (or [B, S, V] at ``logits_positions`` [B, S]).

        Pass ``inputs_embeds`` (from :meth:`embed_inputs`) to skip the audio tower. ``attention_mask``
        [B, T] (left or right padding), ``position_ids``, ``interventions``, ``prefix``: as the shared decoder.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids [B, T] (with the audio inputs) or inputs_embeds [B, T, H]")
            inputs_embeds = self.embed_inputs(input_ids, input_features, feature_attention_mask)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, interventions=interventions,
                                   logits_positions=logits_positions, prefix=prefix)


def rules(config: Qwen2_5OmniConfig) -> tuple[Rule, ...]:
    p = config.hf_prefix
    return (decoder_rules(f"{p}model", f"{p}lm_head", "language_model/")
            + encoder_rules(f"{p}audio_tower", "audio_tower/", config.audio, final_norm="ln_post"))


# Known checkpoint keys that the port leaves out: the vision tower, the talker and token2wav (not part
# of an audio+text thinker), and audio_bos_eos_token (stored by transformers but used by no forward pass).
IGNORE = ("talker.*", "token2wav.*", "thinker.visual.*", "visual.*",
          "thinker.audio_tower.audio_bos_eos_token.weight", "audio_tower.audio_bos_eos_token.weight")


def init_inputs(config: Qwen2_5OmniConfig) -> dict[str, Any]:
    """One 4-frame clip (one audio token) at one placeholder: creates every parameter."""
    return {"input_ids": jnp.full((1, 1), config.audio_token_id, jnp.int32),
            "input_features": jnp.zeros((1, config.audio.num_mel_bins, 4), jnp.float32),
            "feature_attention_mask": jnp.ones((1, 4), jnp.int32)}


__all__ = ["IGNORE", "Qwen2_5OmniConfig", "Qwen2_5OmniThinker", "init_inputs", "rules"]
