"""Tiny random Qwen2-Audio and Voxtral checkpoints in the layout the study reads: the converted model (``port.json``
+ ``params/``) and, beside it, each model's stand-in tokenizer with the real special tokens at their real ids
(tests/ports/qwen2_audio_tokenizer_fixture.py: ``tokenizer.json`` inside the checkpoint directory, as a converted
checkpoint with its tokenizer copied in; tests/ports/voxtral_tekken_fixture.py: ``tekken.json`` in a directory of
its own, as the hub's Voxtral-Mini-3B-2507 holds it).

  python -m tests.experiments.tiny_lalm OUT_DIR     # prints the study's config arguments for each model

The encoders take the real 30-s windows (1500 positions, 3000 mel frames), at 16 mel bins, d_model 8 and one
layer; Voxtral's stacks 4 frames per token (ffn = 4 × d_model), so a window gives 375 audio tokens as the released
model's does (what ``ports.features.voxtral`` counts).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import jax

import ports
from ports import prompts
from ports.audio import AudioEncoderConfig
from ports.qwen2_audio import Qwen2AudioConfig
from ports.voxtral import VoxtralConfig
from tests.ports.qwen2_audio_tokenizer_fixture import SPECIAL_IDS, write_qwen2_audio_tokenizer
from tests.ports.voxtral_tekken_fixture import write_tekken

N_MELS = 16
AUDIO_WIDTH = 8


def _decoder(vocab_size: int, family: str) -> ports.DecoderConfig:
    return ports.DecoderConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=8, rope_theta=10000.0,
                               attention_bias=family == "qwen2", model_type=family)


def _save(out: Path, model: str, config, seed: int) -> Path:
    spec = ports.MODELS[model]
    params = spec.build(config, jax.numpy.float32).init(jax.random.key(seed), **spec.init_inputs(config))["params"]
    return ports.save(out, model, config, params, overwrite=True)  # replaces the directory: write it first


def _move_specials_down(directory: Path) -> dict[str, int]:
    """Renumbers the stand-in's special tokens (at Qwen2-Audio's ids, 151643 on) to follow its base vocabulary, in
    the same order: a model over the real ids would carry 151k-row embeddings, and the study's full-vocabulary
    programs (plain-text loss, generation) would be sized by them. Returns {token: its new id}."""
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    base = max(i for t, i in vocab.items() if t not in SPECIAL_IDS) + 1
    moved = {t: base + i - min(SPECIAL_IDS.values()) for t, i in SPECIAL_IDS.items()}
    vocab.update(moved)
    for token in data["added_tokens"]:
        token["id"] = moved[token["content"]]
    path.write_text(json.dumps(data, ensure_ascii=False))
    return moved


def qwen2_audio(out: Path, seed: int = 0) -> dict[str, Path]:
    """Writes the model with its tokenizer at ``out``; returns the study's config keys (tokenizer: the default,
    the checkpoint directory)."""
    with tempfile.TemporaryDirectory() as tmp:  # the model's sizes follow the tokenizer; saving replaces ``out``
        ids = _move_specials_down(write_qwen2_audio_tokenizer(tmp))
        audio = AudioEncoderConfig(num_mel_bins=N_MELS, d_model=AUDIO_WIDTH, encoder_layers=1,
                                   encoder_attention_heads=2, encoder_ffn_dim=2 * AUDIO_WIDTH,
                                   max_source_positions=1500, pool=True)
        config = Qwen2AudioConfig(audio=audio, text=_decoder(max(ids.values()) + 1, "qwen2"),
                                  audio_token_id=ids["<|AUDIO|>"])
        ckpt = _save(out, "qwen2_audio", config, seed)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(tmp) / name, ckpt / name)
    return {"checkpoint": ckpt}


def voxtral(out: Path, seed: int = 0) -> dict[str, Path]:
    """Writes ``out/model`` (the converted model) and ``out/tokenizer`` (tekken.json); returns the config keys."""
    tokenizer_dir = write_tekken(Path(out) / "tokenizer")
    vocab = len(prompts.load_tokenizer(tokenizer_dir))
    audio = AudioEncoderConfig(num_mel_bins=N_MELS, d_model=AUDIO_WIDTH, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=4 * AUDIO_WIDTH, max_source_positions=1500)
    config = VoxtralConfig(audio=audio, text=_decoder(vocab, "llama"))
    return {"checkpoint": _save(Path(out) / "model", "voxtral", config, seed), "tokenizer": tokenizer_dir}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name, build in (("qwen2_audio", qwen2_audio), ("voxtral", voxtral)):
        print(name, ",".join(f"{k}={v}" for k, v in build(root / name).items()))
