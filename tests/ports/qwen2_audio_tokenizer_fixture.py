"""A tiny Qwen2-Audio-style ``tokenizer.json`` + ``tokenizer_config.json``: Qwen2's byte-level BPE layout (its
split pattern, GPT-2 byte alphabet) with a few hundred tokens instead of 151643, and the special tokens that
Qwen2-Audio's prompts use at their real ids (151643 on).

Importable by any test: ``write_qwen2_audio_tokenizer(tmp_path)`` then ``ports.prompts.load_tokenizer(tmp_path)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ports.prompts import KIMI_PATTERN as QWEN2_PATTERN  # Qwen2's pre-tokenizer split (see ports.prompts)
from tests.ports.kimi_tokenizer_fixture import ranks_for

# Qwen2-Audio-7B-Instruct's special tokens and ids (its tokenizer's added tokens; config audio_token_index 151646).
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646,
               "<|audio_bos|>": 151647, "<|audio_eos|>": 151648}
WORDS = ("system", "user", "assistant", "You", " are", " a", " helpful", " assistant", ".", "Audio", ":",
         "What", " emotion", " is", " this", "?", "Be", " brief", " neutral", " happy", " sad", " angry")


def write_qwen2_audio_tokenizer(directory: str | Path) -> Path:
    """Writes ``tokenizer.json`` (byte-level BPE over :func:`ranks_for` ``WORDS``, merges rebuilding each word;
    the special tokens in the model vocabulary at :data:`SPECIAL_IDS`, which keeps them there when they are
    also added as special tokens) and ``tokenizer_config.json`` (pad ``<|endoftext|>``, eos ``<|im_end|>``);
    returns ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    ranks = ranks_for(WORDS)
    vocab = {text(t): r for t, r in ranks.items()} | SPECIAL_IDS
    # ranks_for builds each word from its one-byte-shorter prefix and its last byte, in rank order
    merges = [(text(t[:-1]), text(t[-1:])) for t in sorted(ranks, key=ranks.get) if len(t) > 1]
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_IDS])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "unk_token": None, "bos_token": None}))
    return directory
