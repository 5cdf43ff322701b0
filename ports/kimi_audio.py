"""Kimi-Audio-7B-Instruct (remote code ``modeling_moonshot_kimia.py``; no transformers class) in Flax linen.

Two token streams are summed: ``input_ids`` (the audio stream: GLM-4-Voice codes + ``token_offset``,
152064 in the released config, and the kimia control tokens) and ``text_input_ids``
(``<|im_kimia_text_blank|>`` under audio). At continuous (audio) positions the audio stream also carries
Whisper features::

    audio_emb = embed(input_ids)
    audio_emb = (audio_emb + vq_adaptor(whisper)) * sqrt(2)     where is_continuous_mask
    inputs_embeds = audio_emb + embed(text_input_ids)

``whisper`` = Whisper-large-v3 encoder outputs (50 Hz) of each 30-s segment, 4 consecutive frames
concatenated (5120-d at 12.5 Hz), ``ceil(samples / 1280)`` tokens kept per segment. The text head is
``lm_head``; the audio-output MIMO branch (``mimo_layers`` from the output of layer ``mimo_from_layer``,
``mimo_norm``, ``mimo_output``) is available as :meth:`KimiAudio.mimo_logits` and is not run for text.

Shapes: B = prompts, T = tokens, S = 30-s segments, M = mel bins, F = 3000 frames, N = F / 8 tokens per
segment, H = hidden size, A = adaptor input (4 * whisper d_model), V = vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ports.audio import (
    LINEAR,
    NONE,
    AudioEncoder,
    AudioEncoderConfig,
    encoder_rules,
    is_concrete,
    splice,
    whisper_config_from_hf,
)
from ports.config import Config, DecoderConfig, UnsupportedConfigError
from ports.decoder import DecoderLayer, Qwen2ForCausalLM, RMSNorm, rope_tables
from ports.rules import LAYER, Rule, decoder_rules

STACK = 4  # Whisper frames (50 Hz) concatenated into one adaptor input (12.5 Hz)
WHISPER_DIR = "whisper-large-v3"


@dataclasses.dataclass(frozen=True)
class KimiAudioConfig(Config):
    text: DecoderConfig
    whisper: AudioEncoderConfig
    mimo_layers: int = 6
    mimo_from_layer: int = 21
    adaptor_input_dim: int = 5120
    # <|im_kimia_text_blank|>: the audio stream's token under text. Not in config.json; 151666 in the released
    # tokenizer as integrations report it; ports.prompts.kimi_audio_tokens reads the real one from the tokenizer.
    text_blank_id: int = 151666
    # config.json's kimia_token_offset: where the GLM-4-Voice codes start in the vocabulary (an audio-stream id
    # is code + token_offset). A default so that port.json files written before this field still load
    # (Config.from_dict passes only the keys it finds).
    token_offset: int = 152064

    def __post_init__(self):
        if self.adaptor_input_dim != STACK * self.whisper.d_model:
            raise ValueError(f"adaptor_input_dim={self.adaptor_input_dim} != {STACK} * whisper d_model="
                             f"{self.whisper.d_model}")
        if not 0 <= self.mimo_from_layer < self.text.num_hidden_layers:
            raise ValueError(f"mimo_from_layer={self.mimo_from_layer} is not a layer index")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], whisper_hf: Mapping[str, Any]) -> KimiAudioConfig:
        """``hf``: the checkpoint's config.json; ``whisper_hf``: ``whisper-large-v3/config.json``.

        RoPE theta is 10000 when config.json gives none (neither ``rope_theta`` nor a ``rope_parameters`` /
        ``rope_scaling`` theta): the remote config class (``configuration_moonshot_kimia.py``) defaults to 10000,
        as :meth:`DecoderConfig.from_hf` does for any config. The released config.json states 1e6.
        ``token_offset`` comes from ``kimia_token_offset`` (default 152064).
        """
        if hf.get("model_type") != "kimi_audio" and "kimia_mimo_layers" not in hf:
            raise UnsupportedConfigError(f"config.json has model_type={hf.get('model_type')!r} and no kimia_* "
                                         "attributes; --model=kimi_audio expects Kimi-Audio's remote-code config")
        if not hf.get("use_whisper_feature", True):
            raise UnsupportedConfigError("use_whisper_feature=False is not implemented")
        kimia = {k for k in hf if k.startswith("kimia_") or k in _KIMIA_OTHER}
        text_hf = {**{k: v for k, v in hf.items() if k not in kimia}, "model_type": "qwen2"}
        text = DecoderConfig.from_hf(text_hf)
        whisper = whisper_config_from_hf(whisper_hf, f"{WHISPER_DIR}/config.json")
        return cls(text=text, whisper=whisper, mimo_layers=hf.get("kimia_mimo_layers", 6),
                   mimo_from_layer=hf.get("kimia_mimo_transformer_from_layer_index", 21),
                   adaptor_input_dim=hf.get("kimia_adaptor_input_dim", 5120),
                   token_offset=hf.get("kimia_token_offset", 152064))


# Kimi's token bookkeeping (ids of the kimia control tokens, output vocab split, audio delay for
# generation): no effect on a forward pass given the ids.
_KIMIA_OTHER = frozenset({"num_audio_special_tokens", "num_base_tokens", "use_whisper_feature"})
def stack_frames(frames, valid):
    """Whisper outputs [S, 2N', D] with valid [S, 2N'] -> [S, N, 4D] and valid [S, N] (4-frame stacks)."""
    s, f, d = frames.shape
    pad = (-f) % STACK
    frames = jnp.pad(frames, ((0, 0), (0, pad), (0, 0)))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
    return frames.reshape(s, -1, STACK * d), valid.reshape(s, -1, STACK).any(-1)


class VQAdaptor(nn.Module):
    """Linear(A -> H) -> SiLU -> Dropout (inference: identity) -> Linear(H -> H) -> LayerNorm(eps, bias)."""

    hidden_size: int
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, self.hidden_size, dtype=self.dtype, param_dtype=self.dtype)
        h = dense(name="layers_3")(nn.silu(dense(name="layers_0")(x)))
        return nn.LayerNorm(self.eps, dtype=self.dtype, param_dtype=self.dtype, name="layers_4")(h)


class KimiAudio(nn.Module):
    """``whisper`` + ``vq_adaptor`` + ``language_model`` (the shared decoder) + the MIMO branch."""

    config: KimiAudioConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.whisper = AudioEncoder(cfg.whisper, self.dtype)
        self.vq_adaptor = VQAdaptor(cfg.text.hidden_size, cfg.text.rms_norm_eps, self.dtype)
        self.language_model = Qwen2ForCausalLM(cfg.text, self.dtype)
        self.mimo_layers = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                                   in_axes=nn.broadcast, length=cfg.mimo_layers)(cfg.text, self.dtype)
        self.mimo_norm = RMSNorm(cfg.text.rms_norm_eps, self.dtype)
        self.mimo_output = nn.Dense(cfg.text.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.dtype)

    def whisper_tokens(self, whisper_input_features, whisper_input_mask=None):
        """Mel segments [S, M, F] with frame mask [S, F] -> adaptor inputs [S, N, A], valid [S, N].

        Kimi keeps ``ceil(samples / 1280)`` = ``ceil(valid_frames / 8)`` tokens per segment.
        """
        frames, _ = self.whisper(whisper_input_features)  # Whisper attends over the padded window, unmasked
        s, f = whisper_input_features.shape[0], whisper_input_features.shape[-1]
        n_valid = (jnp.ones((s, f), jnp.int32) if whisper_input_mask is None else whisper_input_mask).sum(-1)
        stacked, _ = stack_frames(frames, jnp.ones(frames.shape[:2], bool))
        valid = jnp.arange(stacked.shape[1])[None] < (-(-n_valid // (2 * STACK)))[:, None]
        return stacked, valid

    def embed_answer(self, answer_ids):
        """answer_ids [B, M] -> [B, M, H]: a text answer runs in the text stream over blanks in the audio stream
        (the remote code's generation loop feeds <|im_kimia_text_blank|> there while it writes text)."""
        blank = self.config.text_blank_id
        if not 0 <= blank < self.config.text.vocab_size:  # an out-of-range id would be clamped silently
            raise ValueError(f"text_blank_id={blank} is outside the vocabulary (size {self.config.text.vocab_size}); "
                             "set it to the tokenizer's <|im_kimia_text_blank|> id")
        embed = self.language_model.embed_inputs
        return embed(answer_ids) + embed(jnp.full_like(answer_ids, blank))

    def embed_inputs(self, input_ids, text_input_ids=None, whisper_input_features=None, is_continuous_mask=None,
                     whisper_input_mask=None):
        """input_ids [B, T] (audio stream), text_input_ids [B, T], whisper_input_features [S, M, F] with
        whisper_input_mask [S, F], is_continuous_mask [B, T] bool -> inputs_embeds [B, T, H]."""
        embed = self.language_model.embed_inputs
        audio_emb = embed(input_ids)
        if whisper_input_features is not None:
            if is_continuous_mask is None:
                raise ValueError("is_continuous_mask [B, T] is required with whisper_input_features")
            feats, valid = self.whisper_tokens(whisper_input_features, whisper_input_mask)
            cont = is_continuous_mask.astype(bool)
            whisper = splice(jnp.zeros_like(audio_emb), cont, self.vq_adaptor(feats), valid,
                             "continuous (is_continuous_mask) positions")
            audio_emb = jnp.where(cont[..., None], (audio_emb + whisper) * jnp.sqrt(2.0).astype(audio_emb.dtype),
                                  audio_emb)
        elif is_continuous_mask is not None and is_concrete(is_continuous_mask) and np.any(is_continuous_mask):
            raise ValueError("is_continuous_mask marks audio positions but no whisper_input_features were given")
        return audio_emb if text_input_ids is None else audio_emb + embed(text_input_ids)

    def __call__(self, input_ids=None, text_input_ids=None, whisper_input_features=None, is_continuous_mask=None,
                 attention_mask=None, position_ids=None, inputs_embeds=None, interventions=None,
                 logits_positions=None, whisper_input_mask=None, prefix=None):
        """Text-head logits [B, T, V] (or [B, S, V] at ``logits_positions``); ``inputs_embeds`` skips the
        streams and Whisper; other arguments as the shared decoder."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids [B, T] (with the other streams) or inputs_embeds [B, T, H]")
            inputs_embeds = self.embed_inputs(input_ids, text_input_ids, whisper_input_features, is_continuous_mask,
                                              whisper_input_mask)
        logits = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                     position_ids=position_ids, interventions=interventions,
                                     logits_positions=logits_positions, prefix=prefix)
        if self.is_initializing():  # create the MIMO parameters too
            self.mimo_logits(jnp.zeros_like(inputs_embeds), attention_mask)
        return logits

    def mimo_logits(self, hidden_states, attention_mask=None, position_ids=None):
        """The audio-output branch: hidden_states [B, T, H] = output of layer ``mimo_from_layer`` ->
        mimo_layers -> mimo_norm -> mimo_output logits [B, T, V]."""
        b, t, _ = hidden_states.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if position_ids is None:
            position_ids = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        mask = (jnp.tril(jnp.ones((t, t), bool))[None] & attention_mask.astype(bool)[:, None, :])[:, None]
        cos, sin = rope_tables(position_ids, self.config.text.head_dim, self.config.text.rope_theta, self.dtype)
        h, _ = self.mimo_layers(hidden_states, cos, sin, mask, {})
        return self.mimo_output(self.mimo_norm(h))


def rules(config: KimiAudioConfig) -> tuple[Rule, ...]:
    """The remote-code layout; Whisper's tensors under ``whisper-large-v3/`` (an HF WhisperModel)."""
    mimo = tuple(Rule(r.hf.replace("X.layers.", "model.mimo_layers."), r.path.replace("model/layers", "mimo_layers"),
                      r.transform, r.inverse)
                 for r in decoder_rules("X", "Y", "") if LAYER in r.hf)
    adaptor = (*[Rule(f"model.vq_adaptor.layers.{i}.weight", f"vq_adaptor/layers_{i}/kernel", **LINEAR)
                 for i in (0, 3)],
               *[Rule(f"model.vq_adaptor.layers.{i}.bias", f"vq_adaptor/layers_{i}/bias", **NONE) for i in (0, 3, 4)],
               Rule("model.vq_adaptor.layers.4.weight", "vq_adaptor/layers_4/scale", **NONE))
    return (decoder_rules("model", "lm_head", "language_model/") + mimo + adaptor
            + (Rule("model.mimo_norm.weight", "mimo_norm/scale", **NONE),
               Rule("mimo_output.weight", "mimo_output/kernel", **LINEAR))
            + encoder_rules(f"{WHISPER_DIR}/model.encoder", "whisper/", config.whisper))


IGNORE = (f"{WHISPER_DIR}/model.decoder.*", f"{WHISPER_DIR}/proj_out.weight")


def init_inputs(config: KimiAudioConfig) -> dict[str, Any]:
    """One segment whose first 8 frames (one token) fill one continuous position: creates every parameter."""
    f = config.whisper.window_frames
    return {"input_ids": jnp.zeros((1, 1), jnp.int32), "text_input_ids": jnp.zeros((1, 1), jnp.int32),
            "whisper_input_features": jnp.zeros((1, config.whisper.num_mel_bins, f), jnp.float32),
            "is_continuous_mask": jnp.ones((1, 1), bool),
            "whisper_input_mask": (jnp.arange(f) < 8)[None].astype(jnp.int32)}


