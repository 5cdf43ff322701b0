"""A tiny Kimi-Audio-style text tokenizer directory: ``tiktoken.model`` + ``tokenizer_config.json``, laid out as
the released one (base tiktoken vocabulary, then 256 reserved ids holding the control tokens at the same
offsets from the base count) but with 256 byte tokens and a few merges instead of Qwen2's 151643 tokens.

Importable by any test: ``write_kimi_tokenizer(tmp_path)`` then ``ports.prompts.load_tokenizer(tmp_path)``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

from ports.prompts import KIMI_CONTROL_OFFSETS

# Words (as they appear after the pre-tokenizer split, so with their leading space) that become one token each.
WORDS = ("neutral", "happy", "sad", "angry", " neutral", " happy", " sad", " angry", "What", " emotion", " is",
         " this", " the", "ing", "  ", "   ", "\n\n", "你好", " 情绪")
N_RESERVED = 256  # the released tokenizer reserves ids base .. base + 255


def byte_order() -> list[int]:
    """tiktoken's (and GPT-2's) order of the 256 single-byte tokens, ranks 0..255: the printable bytes of
    ``bytes_to_unicode`` first (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``), then the rest in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return printable + [b for b in range(256) if b not in printable]


def ranks_for(words: Iterable[str]) -> dict[bytes, int]:
    """{token bytes: rank}: the 256 bytes, then for each word the prefixes of its UTF-8 bytes from length 2
    up (``ne``, ``neu``, ..., ``neutral``), each new one taking the next rank. Every merge's halves (the
    shorter prefix and one byte) are tokens, so BPE rebuilds each word as one token."""
    ranks = {bytes([b]): r for r, b in enumerate(byte_order())}
    for word in words:
        data = word.encode()
        for end in range(2, len(data) + 1):
            ranks.setdefault(data[:end], len(ranks))
    return ranks


def added_tokens(n_base: int, fillers: bool = True) -> dict[str, dict]:
    """``added_tokens_decoder``: the control tokens at base + their offset; with ``fillers`` every other
    reserved id (base .. base + 255) holds ``<|reserved_token_{id - base}|>``."""
    at = {n_base + off: tok for tok, off in KIMI_CONTROL_OFFSETS.items()}
    ids = range(n_base, n_base + N_RESERVED) if fillers else sorted(at)
    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    return {str(i): {"content": at.get(i, f"<|reserved_token_{i - n_base}|>"), **entry} for i in ids}


def write_kimi_tokenizer(directory: str | Path, words: Iterable[str] = WORDS, fillers: bool = True) -> Path:
    """Writes ``tiktoken.model`` (``<base64 token> <rank>`` per line, :func:`ranks_for` ``words``) and
    ``tokenizer_config.json`` (:func:`added_tokens`, no named pad token) into ``directory``; returns it.

    With the default words the base count is 325 (256 bytes + 69 merges), so ``<|im_msg_end|>`` is 327,
    ``<|im_kimia_text_blank|>`` 348 and ``<|im_kimia_speech_ct_id|>`` 357; "neutral" is 261, "happy" 265,
    "sad" 267, "angry" 271, " neutral" 278, " happy" 283, " sad" 286, " angry" 291, "What" 294,
    " emotion" 301 (see :data:`WORDS` for the rest).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ranks = ranks_for(words)
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in ranks.items()]
    (directory / "tiktoken.model").write_text("\n".join(lines) + "\n")
    config = {"tokenizer_class": "TikTokenTokenizer", "model_max_length": 8192,
              "added_tokens_decoder": added_tokens(len(ranks), fillers)}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    return directory
