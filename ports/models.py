"""The table of ported models: how each is configured, built, converted and initialised."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ports import audio_flamingo3, glm4_voice, kimi_audio, qwen2_5_omni, qwen2_audio, voxtral
from ports.audio import AudioEncoder, AudioEncoderConfig, encoder_rules, whisper_config_from_hf
from ports.config import DecoderConfig
from ports.decoder import Qwen2ForCausalLM
from ports.rules import Rule, attention_biases, decoder_rules


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the converter and the loader need to know about one model family."""

    config_cls: type
    # config.json, then each of ``subfolders``' config.json, as dicts -> our config
    config_from_hf: Callable[..., Any]
    build: Callable[[Any, Any], nn.Module]  # (config, dtype) -> module
    rules: Callable[[Any], tuple[Rule, ...]]
    init_inputs: Callable[[Any], dict[str, jax.Array]]  # smallest inputs that create every parameter
    ignore: tuple[str, ...] = ()  # checkpoint keys that are known and carry nothing
    # Sub-checkpoint folders of the directory (own config.json + safetensors); their keys read as <folder>/<key>.
    subfolders: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {
    **{family: ModelSpec(
        config_cls=DecoderConfig,
        config_from_hf=lambda hf, family=family: DecoderConfig.from_hf(hf, family),
        build=lambda cfg, dtype: Qwen2ForCausalLM(cfg, dtype),
        rules=lambda cfg: decoder_rules(biases=attention_biases(cfg)),
        init_inputs=lambda cfg: {"input_ids": jnp.zeros((1, 1), jnp.int32)},
        ignore=("model.layers.{layer}.self_attn.rotary_emb.inv_freq",),
    ) for family in ("qwen2", "llama")},
    # Whisper's encoder alone (e.g. Whisper tiny.en from a CTranslate2 model: ports.convert.convert_ct2);
    # the Hugging Face source is a WhisperForConditionalGeneration directory, whose decoder is skipped.
    "whisper_encoder": ModelSpec(
        config_cls=AudioEncoderConfig,
        config_from_hf=whisper_config_from_hf,
        build=lambda cfg, dtype: AudioEncoder(cfg, dtype),
        rules=lambda cfg: encoder_rules("model.encoder", "", cfg),
        init_inputs=lambda cfg: {"input_features": jnp.zeros((1, cfg.num_mel_bins, cfg.window_frames))},
        ignore=("model.decoder.*", "proj_out.weight"),
    ),
    "qwen2_5_omni": ModelSpec(
        config_cls=qwen2_5_omni.Qwen2_5OmniConfig,
        config_from_hf=qwen2_5_omni.Qwen2_5OmniConfig.from_hf,
        build=lambda cfg, dtype: qwen2_5_omni.Qwen2_5OmniThinker(cfg, dtype),
        rules=qwen2_5_omni.rules,
        init_inputs=qwen2_5_omni.init_inputs,
        ignore=qwen2_5_omni.IGNORE,
    ),
    "audio_flamingo3": ModelSpec(
        config_cls=audio_flamingo3.AudioFlamingo3Config,
        config_from_hf=audio_flamingo3.AudioFlamingo3Config.from_hf,
        build=lambda cfg, dtype: audio_flamingo3.AudioFlamingo3(cfg, dtype),
        rules=audio_flamingo3.rules,
        init_inputs=audio_flamingo3.init_inputs,
    ),
    "qwen2_audio": ModelSpec(
        config_cls=qwen2_audio.Qwen2AudioConfig,
        config_from_hf=qwen2_audio.Qwen2AudioConfig.from_hf,
        build=lambda cfg, dtype: qwen2_audio.Qwen2Audio(cfg, dtype),
        rules=qwen2_audio.rules,
        init_inputs=qwen2_audio.init_inputs,
    ),
    "voxtral": ModelSpec(
        config_cls=voxtral.VoxtralConfig,
        config_from_hf=voxtral.VoxtralConfig.from_hf,
        build=lambda cfg, dtype: voxtral.Voxtral(cfg, dtype),
        rules=voxtral.rules,
        init_inputs=voxtral.init_inputs,
    ),
    "kimi_audio": ModelSpec(
        config_cls=kimi_audio.KimiAudioConfig,
        config_from_hf=kimi_audio.KimiAudioConfig.from_hf,
        build=lambda cfg, dtype: kimi_audio.KimiAudio(cfg, dtype),
        rules=kimi_audio.rules,
        init_inputs=kimi_audio.init_inputs,
        ignore=kimi_audio.IGNORE,
        subfolders=(kimi_audio.WHISPER_DIR,),
    ),
    # GLM-4-Voice's speech tokenizer (THUDM/glm-4-voice-tokenizer): mel segments -> 12.5-Hz codes.
    "glm4_voice_tokenizer": ModelSpec(
        config_cls=glm4_voice.GLM4VoiceTokenizerConfig,
        config_from_hf=glm4_voice.GLM4VoiceTokenizerConfig.from_hf,
        build=lambda cfg, dtype: glm4_voice.GLM4VoiceTokenizer(cfg, dtype),
        rules=glm4_voice.rules,
        init_inputs=glm4_voice.init_inputs,
        ignore=glm4_voice.IGNORE,
    ),
}


def spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; ported models: {sorted(MODELS)}")
    return MODELS[model]


def abstract_params(model: str, config, dtype) -> Any:
    """The parameter tree as ShapeDtypeStructs, built by ``jax.eval_shape`` (nothing is allocated)."""
    s = spec(model)
    module = s.build(config, dtype)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), **s.init_inputs(config)))
    return module, variables["params"]
