"""A stand-in for ``esn_jax/reference/``: a tiny random Qwen2.5-Omni thinker in the same layout
(``port.json`` + ``params/``, ``tokenizer.json`` + ``tokenizer_config.json``, ``reference.json``).

  python -m tests.experiments.tiny_reference OUT_DIR [reference]   # time the study without the trained model
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

import ports
from ports.audio import AudioEncoderConfig
from ports.qwen2_5_omni import Qwen2_5OmniConfig, init_inputs

LABELS = ("neutral", "happy", "sad", "angry")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
WORDS = ("[UNK]", "system", "user", "assistant", "\n", " ", "Which", "emotion?", *LABELS)
QUESTION = "Which emotion?"


def build(out: Path, seed: int = 0, hidden: int = 32, intermediate: int = 64, layers: int = 2, n_mels: int = 16,
          audio_width: int = 16) -> Path:
    """Writes the stand-in at ``out`` and returns it."""
    out = Path(out)
    vocab = {t: i for i, t in enumerate(WORDS + SPECIALS)}
    audio = AudioEncoderConfig(num_mel_bins=n_mels, d_model=audio_width, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=2 * audio_width, max_source_positions=100, chunk_frames=200,
                               positions="sinusoidal", pool=True, output_dim=hidden)
    text = ports.DecoderConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=intermediate,
                               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    config = Qwen2_5OmniConfig(audio=audio, text=text, audio_token_id=vocab["<|AUDIO|>"],
                               audio_start_token_id=vocab["<|audio_bos|>"], audio_end_token_id=vocab["<|audio_eos|>"],
                               hf_prefix="")
    module = ports.MODELS["qwen2_5_omni"].build(config, jax.numpy.float32)
    params = module.init(jax.random.key(seed), **init_inputs(config))["params"]
    ports.save(out, "qwen2_5_omni", config, params, overwrite=True)  # replaces the directory: write it first
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "pad_token": "<|endoftext|>", "unk_token": "[UNK]"}))
    (out / "reference.json").write_text(json.dumps({
        "labels": list(LABELS), "label_token_ids": [[vocab[w]] for w in LABELS], "question": QUESTION,
        "system": None, "dataset": "synthetic_prosody", "test_accuracy": None}))
    return out


if __name__ == "__main__":  # OUT_DIR [reference]: "reference" gives the trained reference model's sizes
    sizes = dict(hidden=64, intermediate=256, n_mels=128, audio_width=64) if sys.argv[2:] == ["reference"] else {}
    print(build(Path(sys.argv[1]), **sizes))
