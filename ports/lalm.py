"""What the spliced LALMs share: Audio Flamingo 3, Qwen2-Audio and Voxtral.

Each is transformers' ``audio_tower`` (the shared Whisper-style encoder, :mod:`ports.audio`) ->
``multi_modal_projector`` -> the audio tokens put at the placeholder ids of the prompt (masked_scatter) ->
``language_model`` (the shared decoder, :mod:`ports.decoder`). The models differ in the encoder's regime,
the projector, the placeholder id and the names transformers gives the audio inputs; each port keeps
transformers' argument names in its ``__call__`` and ``embed_inputs``, and this module holds the rest once.

Shapes: B = prompts, T = prompt tokens, W = windows (all clips' windows, in order), M = mel bins,
F = mel frames per window, N = audio tokens per window, H = hidden size, V = vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ports.audio import HF_BOOKKEEPING, NONE, AudioEncoder, encoder_rules, is_concrete, splice
from ports.config import FAMILIES, DecoderConfig, UnsupportedConfigError
from ports.decoder import Qwen2ForCausalLM
from ports.rules import LINEAR, Rule, attention_biases, decoder_rules


def check_model_type(hf: Mapping[str, Any], expected: str, model: str) -> None:
    if hf.get("model_type") != expected:
        raise UnsupportedConfigError(f"config.json has model_type={hf.get('model_type')!r}; --model={model} expects "
                                     f"{expected!r}")


def refuse(problems: list[str], unknown: Iterable[str], model: str, what: str = "config.json") -> None:
    """Raises one UnsupportedConfigError naming every problem and every unknown attribute, if any."""
    unknown = sorted(unknown)
    problems = ([f"unknown attributes {unknown}"] if unknown else []) + problems
    if problems:
        raise UnsupportedConfigError(f"{what} is not supported by the {model} port: " + "; ".join(problems))


def unknown_top_level(hf: Mapping[str, Any], used: Iterable[str]) -> set[str]:
    return set(hf) - set(used) - HF_BOOKKEEPING


def check_full_window(audio, pooled: bool, model: str) -> None:
    """The encoder of these models: full 30-s windows, learned positions, no projection, pooled or not."""
    if audio.chunk_frames is not None or audio.positions != "learned" or audio.pool != pooled or audio.output_dim:
        raise ValueError(f"{model}'s encoder runs full windows with learned positions, {'' if pooled else 'not '}"
                         "pooled, without a projection")


def text_config_from_hf(text: Mapping[str, Any]) -> DecoderConfig:
    """The language model's config (Qwen2 or Llama). transformers' classes of these models always have their
    own lm_head (no ``_tied_weights_keys``), whatever ``tie_word_embeddings`` says, so it is read untied."""
    family = text.get("model_type") if text.get("model_type") in FAMILIES else "qwen2"
    return DecoderConfig.from_hf({**text, "tie_word_embeddings": False}, family)


def text_config_to_hf(text: DecoderConfig) -> dict[str, Any]:
    """The text_config dict of an export: untied (see :func:`rules`)."""
    return {**{k: v for k, v in text.to_hf().items() if k != "architectures"}, "tie_word_embeddings": False}


def dense_rules(hf: str, ours: str, bias: bool) -> list[Rule]:
    """A torch Linear ``hf`` (``.weight`` [out, in], optional ``.bias``) <-> our Dense at ``ours``."""
    out = [Rule(f"{hf}.weight", f"{ours}/kernel", **LINEAR)]
    return out + [Rule(f"{hf}.bias", f"{ours}/bias", **NONE)] if bias else out


def projector_rules(bias: bool) -> list[Rule]:
    """The table of :class:`Projector` at ``multi_modal_projector`` (``linear_1``, ``linear_2``)."""
    return [rule for name in ("linear_1", "linear_2")
            for rule in dense_rules(f"multi_modal_projector.{name}", f"multi_modal_projector/{name}", bias)]


def rules(config, projector: Iterable[Rule]) -> tuple[Rule, ...]:
    """The conversion table: the decoder under ``language_model``, the encoder under ``audio_tower``, and the
    model's ``projector`` rules. A tied language model (only ever built in memory, e.g. the mini-LALM from its
    GGUF) exports its embedding as the lm_head too: the untied model read back computes the same logits."""
    head = ((Rule("language_model.lm_head.weight", "language_model/model/embed_tokens/embedding"),)
            if config.text.tie_word_embeddings else ())
    return (decoder_rules("language_model.model", "language_model.lm_head", "language_model/",
                          attention_biases(config.text)) + head
            + encoder_rules("audio_tower", "audio_tower/", config.audio) + tuple(projector))


class Projector(nn.Module):
    """linear_1 (D -> H) -> exact GELU -> linear_2 (H -> H) (Audio Flamingo 3 with biases, Voxtral without)."""

    hidden_size: int
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, self.hidden_size, use_bias=self.bias, dtype=self.dtype,
                                  param_dtype=self.dtype)
        return dense(name="linear_2")(jax.nn.gelu(dense(name="linear_1")(x), approximate=False))


class SplicedLALM(nn.Module):
    """``audio_tower`` + ``multi_modal_projector`` (:meth:`projector`) + ``language_model``.

    Subclasses give :meth:`projector`, ``PLACEHOLDER`` (the placeholder's text, for errors) and their own
    ``embed_inputs`` / ``__call__`` with transformers' argument names, built from :meth:`audio_embeds`,
    :meth:`splice_audio` and :meth:`decode`. ``config`` has ``audio``, ``text`` and ``audio_token_id``.
    """

    config: Any
    dtype: Any = jnp.float32
    PLACEHOLDER = "audio placeholders"

    def setup(self):
        self.audio_tower = AudioEncoder(self.config.audio, self.dtype)
        self.multi_modal_projector = self.projector()
        self.language_model = Qwen2ForCausalLM(self.config.text, self.dtype)

    def projector(self) -> nn.Module:
        raise NotImplementedError

    def embed_answer(self, answer_ids):
        """answer_ids [B, M] -> [B, M, H] (see :meth:`ports.decoder.Qwen2ForCausalLM.embed_answer`)."""
        return self.language_model.embed_answer(answer_ids)

    def audio_embeds(self, input_features, frames_mask):
        """input_features [W, M, F], frames_mask [W, F] or None -> (audio [W, N, H], valid [W, N] bool)."""
        audio, valid = self.audio_tower(input_features, frames_mask)
        return self.multi_modal_projector(audio), valid

    def splice_audio(self, input_ids, audio=None, valid=None):
        """input_ids [B, T]; audio [W, N, H] with valid [W, N] (None: a text-only prompt) -> inputs_embeds [B, T, H]."""
        embeds = self.language_model.embed_inputs(input_ids)
        placeholders = input_ids == self.config.audio_token_id
        if audio is None:
            if is_concrete(input_ids) and np.asarray(placeholders).any():
                raise ValueError(f"input_ids hold {self.PLACEHOLDER} but no input_features were given")
            return embeds
        return splice(embeds, placeholders, audio, valid, self.PLACEHOLDER)

    def decode(self, input_ids, inputs_embeds, embed_kwargs, attention_mask, position_ids, interventions,
               logits_positions, prefix):
        """Logits [B, T, V] (or [B, S, V] at ``logits_positions``); ``inputs_embeds`` skips the encoder, else
        ``embed_inputs(input_ids, **embed_kwargs)`` makes them. Other arguments as the shared decoder."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids [B, T] (with the audio inputs) or inputs_embeds [B, T, H]")
            inputs_embeds = self.embed_inputs(input_ids, **embed_kwargs)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, interventions=interventions,
                                   logits_positions=logits_positions, prefix=prefix)


def one_window_inputs(config, mask: str) -> dict[str, Any]:
    """One window with 4 valid frames (one pooled audio token) at one placeholder, the frame mask passed as
    ``mask``: creates every parameter of a model whose encoder masks the frames past a clip."""
    frames = config.audio.window_frames
    return {"input_ids": jnp.full((1, 1), config.audio_token_id, jnp.int32),
            "input_features": jnp.zeros((1, config.audio.num_mel_bins, frames), jnp.float32),
            mask: (jnp.arange(frames) < 4)[None].astype(jnp.int32)}
