"""Chat-template prompts with each model's audio placeholders, tokenized with the checkpoint's own tokenizer.

A prompt is one user turn holding one clip and a question; ``n_audio`` is that clip's audio-token count
(Audio Flamingo 3 and Kimi-Audio: ``num_audio_tokens`` from :mod:`ports.features`; Qwen2.5-Omni:
:func:`ports.audio.output_lengths` of the clip's valid mel frames). The model replaces the placeholders
with its audio embeddings in order, so the count must match the encoder's output exactly.

* Qwen2.5-Omni: its default system prompt; ``<|audio_bos|>`` + ``<|AUDIO|>`` * N + ``<|audio_eos|>`` before
  the question.
* Audio Flamingo 3: system "You are a helpful assistant."; ``<sound>`` * N right before the question.

Not done: Kimi-Audio. Its prompt is two aligned id streams (audio: kimia control tokens and GLM-4-Voice
codes + 152064; text: ``<|im_kimia_text_blank|>`` under audio) built by the remote code's prompt manager.
The codes need the GLM-4-Voice tokenizer (not ported), and the exact message layout and control-token
ids are not verified here, so no builder is provided for it yet.
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
