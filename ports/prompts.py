"""Chat-template prompts with each model's audio placeholders, tokenized with the checkpoint's own tokenizer.

A prompt is one user turn holding one clip and a question; ``n_audio`` is that clip's audio-token count
(Audio Flamingo 3 and Kimi-Audio: ``num_audio_tokens`` from :mod:`ports.features`; Qwen2.5-Omni:
:func:`ports.audio.output_lengths` of the clip's valid mel frames). The model replaces the placeholders
with its audio embeddings in order, so the count must match the encoder's output exactly.

* Qwen2.5-Omni: its default system prompt; ``<|audio_bos|>`` + ``<|AUDIO|>`` * N + ``<|audio_eos|>`` before
  the question.
* Audio Flamingo 3: system "You are a helpful assistant."; ``<sound>`` * N right before the question.
* Kimi-Audio: two aligned id streams, laid out as the remote code's prompt manager lays out a user text
  message followed by a user audio message and the assistant's start (see :func:`kimi_audio`). The audio
  stream carries the clip's GLM-4-Voice codes (+ the kimia token offset, 152064); that tokenizer is not
  ported, so the codes are an input here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
               "auditory and visual inputs, as well as generating text and speech.")
AF3_SYSTEM = "You are a helpful assistant."


def _chatml(system: str, user: str) -> str:
    """The Qwen2 ChatML layout both templates share, ending where the assistant's answer begins."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def _check_count(n_audio: int) -> None:
    if n_audio < 1:
        raise ValueError(f"n_audio={n_audio}; a clip gives at least one audio token")


def qwen2_5_omni(question: str, n_audio: int, system: str = OMNI_SYSTEM) -> str:
    """Qwen2.5-Omni's prompt: ``<|audio_bos|><|AUDIO|>*n_audio<|audio_eos|>question`` as the user turn."""
    _check_count(n_audio)
    return _chatml(system, f"<|audio_bos|>{'<|AUDIO|>' * n_audio}<|audio_eos|>{question}")


def audio_flamingo3(question: str, n_audio: int, system: str = AF3_SYSTEM) -> str:
    """Audio Flamingo 3's prompt: ``<sound>*n_audio`` then the question as the user turn."""
    _check_count(n_audio)
    return _chatml(system, "<sound>" * n_audio + question)


KIMI_TOKENS = ("<|im_msg_end|>", "<|im_media_begin|>", "<|im_media_end|>", "<|im_kimia_text_blank|>",
               "<|im_kimia_user_msg_start|>", "<|im_kimia_assistant_msg_start|>", "<|im_kimia_speech_ct_id|>")


def kimi_audio_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The ids of Kimi-Audio's control tokens in ``tokenizer``; names every one it lacks."""
    found = {t: tokenizer.convert_tokens_to_ids(t) for t in KIMI_TOKENS}
    missing = [t for t, i in found.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"the tokenizer lacks Kimi-Audio's control tokens {missing}")
    return found


def kimi_audio(tokenizer: PreTrainedTokenizerBase, question: str, codes: Sequence[int]) -> dict[str, np.ndarray]:
    """Kimi-Audio's prompt for one clip: input_ids (audio stream), text_input_ids, is_continuous_mask, each [T].

    codes: the clip's GLM-4-Voice codes already offset into the vocabulary, one per 12.5-Hz frame (as many
    as the clip's Whisper tokens). Layout, one position per column::

        audio: user_start  blank*Q   media_begin codes*N media_end speech_ct msg_end assistant_start
        text:  blank       question  blank       blank*N blank     blank     blank   blank

    with the continuous (Whisper) features added at the N code positions.
    """
    if len(codes) < 1:
        raise ValueError("codes is empty; a clip gives at least one audio token")
    t = kimi_audio_tokens(tokenizer)
    blank = t["<|im_kimia_text_blank|>"]
    q = tokenizer.encode(question, add_special_tokens=False)
    n = len(codes)
    audio = [t["<|im_kimia_user_msg_start|>"], *[blank] * len(q), t["<|im_media_begin|>"], *codes,
             t["<|im_media_end|>"], t["<|im_kimia_speech_ct_id|>"], t["<|im_msg_end|>"],
             t["<|im_kimia_assistant_msg_start|>"]]
    text = [blank, *q, *[blank] * (n + 5)]
    continuous = [False] * (len(q) + 2) + [True] * n + [False] * 4
    return {"input_ids": np.asarray(audio, np.int32), "text_input_ids": np.asarray(text, np.int32),
            "is_continuous_mask": np.asarray(continuous)}


def left_pad(rows: Sequence[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Stacks per-item streams of different lengths [T_i] into [B, T], left-padded (ids with ``pad_id``, masks
    with False), and adds attention_mask [B, T]."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key in rows[0]:
        fill = False if rows[0][key].dtype == bool else pad_id
        out[key] = np.stack([np.concatenate([np.full(width - len(r[key]), fill, r[key].dtype), r[key]])
                             for r in rows])
    out["attention_mask"] = np.stack([np.arange(width) >= width - len(r["input_ids"]) for r in rows]).astype(np.int32)
    return out


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint directory's own tokenizer (local files only: nothing is downloaded)."""
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """-> input_ids [B, T] int32 and attention_mask [B, T] int32, left-padded with the tokenizer's pad token
    (the answer position is then the last column of every row). The prompts already hold every special
    token, so the tokenizer adds none."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; left padding a batch needs one")
    out = tokenizer(list(prompts), padding=True, padding_side="left", add_special_tokens=False, return_tensors="np")
    return {"input_ids": out["input_ids"].astype(np.int32), "attention_mask": out["attention_mask"].astype(np.int32)}
