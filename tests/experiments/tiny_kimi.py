"""A tiny random Kimi-Audio in the layout the study reads: the converted model (``port.json`` + ``params/``), Kimi's
own directory holding only its text tokenizer (a tiny ``tiktoken.model`` + ``tokenizer_config.json`` with the
control tokens at the released offsets) and a converted GLM-4-Voice speech tokenizer.

  python -m tests.experiments.tiny_kimi OUT_DIR     # prints the study's config arguments for it
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

import ports
from ports import glm4_voice, prompts
from ports.audio import AudioEncoderConfig
from ports.kimi_audio import KimiAudioConfig, init_inputs
from tests.ports.kimi_tokenizer_fixture import write_kimi_tokenizer

CODES = 16  # the tiny speech tokenizer's codebook


def build(out: Path, seed: int = 0, n_mels: int = 16) -> dict[str, Path]:
    """Writes ``out/{kimi,text,speech}``; returns the three paths by the study's config keys."""
    out = Path(out)
    text_dir = write_kimi_tokenizer(out / "text")
    tokenizer = prompts.load_tokenizer(text_dir)
    offset = len(tokenizer)  # codes after the text vocabulary and its reserved ids, as in the released model
    whisper = AudioEncoderConfig(num_mel_bins=n_mels, d_model=8, encoder_layers=1, encoder_attention_heads=2,
                                 encoder_ffn_dim=16, max_source_positions=1500)
    text = ports.DecoderConfig(vocab_size=offset + CODES, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0)
    config = KimiAudioConfig(text=text, whisper=whisper, mimo_layers=1, mimo_from_layer=1, adaptor_input_dim=32,
                             text_blank_id=prompts.kimi_audio_tokens(tokenizer)["<|im_kimia_text_blank|>"],
                             token_offset=offset)
    module = ports.MODELS["kimi_audio"].build(config, jax.numpy.float32)
    params = module.init(jax.random.key(seed), **init_inputs(config))["params"]
    ports.save(out / "kimi", "kimi_audio", config, params, overwrite=True)

    encoder = AudioEncoderConfig(num_mel_bins=n_mels, d_model=8, encoder_layers=2, encoder_attention_heads=2,
                                 encoder_ffn_dim=16, max_source_positions=1500, causal_conv=True, block_size=200,
                                 final_norm=False)
    speech = glm4_voice.GLM4VoiceTokenizerConfig(encoder=encoder, pool_kernel=4, codebook_size=CODES)
    spec = ports.MODELS["glm4_voice_tokenizer"]
    speech_params = spec.build(speech, jax.numpy.float32).init(jax.random.key(seed + 1),
                                                               **spec.init_inputs(speech))["params"]
    ports.save(out / "speech", "glm4_voice_tokenizer", speech, speech_params, overwrite=True)
    return {"checkpoint": out / "kimi", "tokenizer": text_dir, "speech_tokenizer": out / "speech"}


if __name__ == "__main__":
    print(",".join(f"{k}={v}" for k, v in build(Path(sys.argv[1])).items()))
