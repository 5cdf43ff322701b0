"""``--shape``: the models and default sizes of the gemm, equal_work, study_af3, stats and attribution comparisons.

* ``tiny``: a two-layer toy decoder and a tiny Audio Flamingo 3 (20-frame windows): seconds on a CPU.
* ``0.5b``: Qwen2.5-0.5B's decoder (the equal-work configuration of the first BENCHMARKS.md run); its AF3 is
  AF3's Whisper-large-v3 encoder (configs/models) before that decoder.
* ``7b``: Qwen2.5-7B's decoder (the Qwen2.5-Omni-7B thinker's text config) and Audio Flamingo 3 7B, both read from
  configs/models; a clip is one 30-s window: 750 audio tokens + the memory plan's 64 prompt tokens = 814.

The weights are random everywhere.
"""

from __future__ import annotations

import dataclasses
import functools

import ports
from experiments.memory import PROMPT_TOKENS, real_config, sequence_length
from ports.audio_flamingo3 import AudioFlamingo3Config

# Qwen2.5-0.5B's shape (its config.json).
QWEN2_5_0_5B = ports.DecoderConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
                                   tie_word_embeddings=True)
TINY = ports.DecoderConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16)
LABELS = ((1000,), (2000,), (3000,), (4000,))  # four single-token "emotion" labels
TINY_LABELS = ((10,), (20,), (30,), (40,))


@dataclasses.dataclass(frozen=True)
class Shape:
    """decoder: the Qwen2 decoder of equal_work, stats and attribution; af3: study_af3's model. Defaults: C clips
    × V masks × T tokens (equal_work; stats: C × T), attribution's clips, the text tokens around each AF3 clip's
    audio, the GEMM sizes n (n × n × n)."""

    name: str
    decoder: ports.DecoderConfig
    af3: AudioFlamingo3Config
    clips: int
    variants: int
    length: int
    attribution_clips: int
    text_tokens: int
    gemm_sizes: tuple[int, ...]
    labels: tuple[tuple[int, ...], ...] = LABELS


SHAPES = ("tiny", "0.5b", "7b")


@functools.cache
def shape(name: str) -> Shape:
    af3_7b = real_config("audio_flamingo3")
    untied = functools.partial(dataclasses.replace, tie_word_embeddings=False)  # AF3 always has its own head
    if name == "7b":
        length = sequence_length("audio_flamingo3", 30.0)
        return Shape(name, real_config("qwen2_5_omni").text, af3_7b, clips=8, variants=16, length=length,
                     attribution_clips=4, text_tokens=PROMPT_TOKENS, gemm_sizes=(8192,))
    if name == "0.5b":
        return Shape(name, QWEN2_5_0_5B, dataclasses.replace(af3_7b, text=untied(QWEN2_5_0_5B)), clips=4,
                     variants=8, length=128, attribution_clips=4, text_tokens=PROMPT_TOKENS, gemm_sizes=(2048, 4096))
    if name == "tiny":
        audio = dataclasses.replace(af3_7b.audio, num_mel_bins=16, d_model=32, encoder_layers=2,
                                    encoder_attention_heads=2, encoder_ffn_dim=64, max_source_positions=10)
        af3 = dataclasses.replace(af3_7b, audio=audio, text=untied(TINY), audio_token_id=TINY.vocab_size - 1)
        return Shape(name, TINY, af3, clips=2, variants=4, length=16, attribution_clips=2, text_tokens=6,
                     gemm_sizes=(256,), labels=TINY_LABELS)
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")
