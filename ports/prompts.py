"""Chat-template prompts with each model's audio placeholders, tokenized with the checkpoint's own tokenizer.

A prompt is one user turn holding one clip and a question; ``n_audio`` is that clip's audio-token count
(Audio Flamingo 3, Kimi-Audio, Qwen2-Audio and Voxtral: ``num_audio_tokens`` from :mod:`ports.features`;
Qwen2.5-Omni: :func:`ports.audio.output_lengths` of the clip's valid mel frames). The model replaces the
placeholders with its audio embeddings in order, so the count must match the encoder's output exactly.

* Qwen2.5-Omni: its chat template's default system prompt ("You are a helpful assistant."; the model card's
  long "You are Qwen, a virtual human…" one, for speech output, is :data:`OMNI_VOICE_SYSTEM`);
  ``<|audio_bos|>`` + ``<|AUDIO|>`` * N + ``<|audio_eos|>`` before the question.
* Audio Flamingo 3: system "You are a helpful assistant."; ``<sound>`` * N right before the question.
* Qwen2-Audio: its chat template's ChatML, default system prompt "You are a helpful assistant.", the audio
  written ``Audio 1: <|audio_bos|>`` + ``<|AUDIO|>`` * N + ``<|audio_eos|>\\n`` right before the question
  (see :func:`qwen2_audio`).
* Voxtral: mistral-common's instruct layout ``<s>[INST][BEGIN_AUDIO]`` + ``[AUDIO]`` * N + question +
  ``[/INST]`` (N = 375 per 30-s window) and no system prompt (none is allowed with audio; see
  :func:`voxtral`). Its tokenizer ships as ``tekken.json``; :func:`tekken_tokenizer` converts it with
  transformers' own tekken conversion into a fast tokenizer that gives mistral-common's ids for such a string
  (:func:`load_tokenizer` picks it).
* Kimi-Audio: two aligned id streams, laid out as the remote code's prompt manager lays out a user text
  message followed by a user audio message and the assistant's start (see :func:`kimi_audio`). The audio
  stream carries the clip's GLM-4-Voice codes (+ the kimia token offset, 152064), which the caller computes
  with :mod:`ports.glm4_voice` (the study: ``experiments.study.adapters``). Its text tokenizer ships as
  ``tiktoken.model`` + ``tokenizer_config.json`` with a remote-code loader; :func:`kimi_tokenizer` builds the
  same tokenizer as a transformers fast tokenizer without that code (:func:`load_tokenizer` picks it for such
  a directory).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

# Qwen2.5-Omni's chat template inserts this system prompt when a conversation has none: the study's default.
OMNI_SYSTEM = "You are a helpful assistant."
# The system prompt Qwen2.5-Omni's model card asks for when the model should also answer in speech (its talker);
# an option (study config ``system=omni_voice``), not the default: the study reads text answers only.
OMNI_VOICE_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                     "auditory and visual inputs, as well as generating text and speech.")
AF3_SYSTEM = "You are a helpful assistant."
# Qwen2-Audio-7B-Instruct's chat template inserts this system prompt when a conversation has none.
QWEN2_AUDIO_SYSTEM = "You are a helpful assistant."
# Named system prompts a config may give by name (their text holds commas, which a config string cannot).
SYSTEM_PRESETS = {"omni_voice": OMNI_VOICE_SYSTEM}


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


def qwen2_audio(question: str, n_audio: int, system: str = QWEN2_AUDIO_SYSTEM) -> str:
    """Qwen2-Audio's prompt: ``Audio 1: <|audio_bos|><|AUDIO|>*n_audio<|audio_eos|>\\nquestion`` as the user
    turn, in ChatML with ``system`` (default: the template's own).

    Source: Qwen2-Audio-7B-Instruct's chat template (the hub's ``chat_template.json``, the same text as
    transformers' ``Qwen2AudioProcessor.default_chat_template``): a system turn "You are a helpful assistant."
    when the conversation has none; in a user turn each audio item is written ``Audio {k}:
    <|audio_bos|><|AUDIO|><|audio_eos|>\\n`` (k from 1) and a text item as itself, right after; the turn ends
    ``<|im_end|>\\n`` and the generation prompt is ``<|im_start|>assistant\\n``. ``Qwen2AudioProcessor``
    then repeats ``<|AUDIO|>`` to the clip's token count (``processing_qwen2_audio.py``), here ``n_audio``."""
    _check_count(n_audio)
    return _chatml(system, f"Audio 1: <|audio_bos|>{'<|AUDIO|>' * n_audio}<|audio_eos|>\n{question}")


# The form of every tekken special token's text (``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``[INST]``, ``[AUDIO]``,
# ``<SPECIAL_42>``, ...): text of this form in a prompt's question would be split out as that special token by
# the converted tokenizer but encoded as plain text by mistral-common, so it is refused.
_TEKKEN_SPECIAL_TEXT = re.compile(r"</?s>|<unk>|<pad>|<SPECIAL_\d+>|\[/?[A-Z_]+\]")


def voxtral(question: str, n_audio: int, system: str | None = None) -> str:
    """Voxtral's prompt: ``<s>[INST][BEGIN_AUDIO][AUDIO]*n_audio question[/INST]`` (no space anywhere).

    Source: mistral-common's instruct encoding (``tokens/tokenizers/instruct.py``, ``InstructTokenizerV7``) of
    one user message holding an audio chunk then a text chunk: BOS, ``[INST]``, the audio encoder's
    ``[BEGIN_AUDIO]`` + ``[AUDIO]`` * N (``tokens/tokenizers/audio.py``: N = 375 per started 30-s window), the
    text's own tokens, ``[/INST]``; no EOS, the answer starts right after. There is no system prompt:
    mistral-common refuses a system message in a conversation with audio (and the model card says system
    prompts are not supported yet), so ``system`` is refused too (it is here so that a study config naming
    one fails by name). The string is special-token text for :func:`tokenize` with the tokenizer of
    :func:`tekken_tokenizer`, which then gives mistral-common's ids. A question holding text of a special
    token's form (``[INST]``, ``</s>``, ...) is refused: mistral-common encodes it as plain text, the
    tokenizer would read the special token.
    """
    _check_count(n_audio)
    if system is not None:
        raise ValueError(f"system={system!r}: Voxtral takes no system prompt with audio (mistral-common refuses a "
                         "system message when audio is present)")
    held = [m.group() for m in _TEKKEN_SPECIAL_TEXT.finditer(question)]
    if held:
        raise ValueError(f"Voxtral's question must not hold special-token text; it holds {held}")
    return f"<s>[INST][BEGIN_AUDIO]{'[AUDIO]' * n_audio}{question}[/INST]"


# Kimi-Audio's control tokens (its prompts' markers; text_eos ends a text answer) -> their offset from the number
# of base (tiktoken) tokens. In the released tokenizer the base is 151643 (Qwen2's vocabulary), so the ids are
# 151645, 151661, 151663, 151666, 151667, 151670, 151671, 151675. Offsets rather than ids so that a tiny test
# tokenizer laid out the same way is checked by the same rule.
KIMI_CONTROL_OFFSETS = {
    "<|im_msg_end|>": 2,
    "<|im_media_begin|>": 18,
    "<|im_media_end|>": 20,
    "<|im_kimia_text_blank|>": 23,
    "<|im_kimia_text_eos|>": 24,
    "<|im_kimia_user_msg_start|>": 27,
    "<|im_kimia_assistant_msg_start|>": 28,
    "<|im_kimia_speech_ct_id|>": 32,
}
KIMI_TOKENS = tuple(KIMI_CONTROL_OFFSETS)


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
    """The checkpoint directory's own tokenizer (local files only: nothing is downloaded).

    ``tekken.json`` (Voxtral) goes through :func:`tekken_tokenizer`, whether or not a ``tokenizer.json`` lies
    beside it (with mistral-common installed, ``AutoTokenizer`` would pick mistral-common's backend, which
    reads no special-token text); ``tiktoken.model`` without ``tokenizer.json`` (Kimi-Audio) through
    :func:`kimi_tokenizer`; anything else through ``AutoTokenizer`` (``tokenizer.json``: Qwen2.5-Omni, Audio
    Flamingo 3, Qwen2-Audio, our converted checkpoints). A directory with no tokenizer files at all is refused
    by name.
    """
    path = Path(directory)
    if path.is_dir() and (path / TEKKEN_FILE).exists():
        return tekken_tokenizer(path / TEKKEN_FILE)
    if path.is_dir() and (path / TIKTOKEN_FILE).exists() and not (path / "tokenizer.json").exists():
        return kimi_tokenizer(path)
    if path.is_dir() and not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{path} holds neither tokenizer.json (a transformers fast tokenizer), "
                                f"{TIKTOKEN_FILE} (a tiktoken BPE vocabulary with tokenizer_config.json, as Kimi-Audio "
                                f"ships its text tokenizer) nor {TEKKEN_FILE} (Mistral's tokenizer file, as Voxtral "
                                "ships it)")
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


TEKKEN_FILE = "tekken.json"
# The named special tokens of every tekken vocabulary (mistral-common's SpecialTokens, ids 0, 1, 2 and 11).
_TEKKEN_NAMED = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def tekken_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Mistral's ``tekken.json`` (Voxtral's tokenizer) as a fast tokenizer, by transformers' own conversion
    (``transformers.integrations.mistral.MistralConverter``; no mistral-common at run time).

    A tekken file holds ``default_num_special_tokens`` special tokens at ids 0..S-1 (``special_tokens``, the
    rest ``<SPECIAL_{id}>``), then byte-level BPE tokens (tiktoken ranks, base64 bytes) at S + rank, cut to
    ``default_vocab_size`` in all, and its pre-tokenizer split ``config.pattern``. The converter gives exactly
    that layout and tiktoken's merges; the special tokens are read out of prompt text (mistral-common's
    ``Tekkenizer.encode`` does not; its instruct encoder places them by id). Named: ``<s>`` bos, ``</s>`` eos
    (what ends an answer), ``<unk>``, ``<pad>`` (left padding); each must be in the file. Plain ``encode``
    adds no BOS: the prompts hold it (:func:`voxtral`)."""
    from transformers.integrations.mistral import MistralConverter

    path = Path(path)
    backend = MistralConverter(str(path)).converted()
    missing = [t for t in _TEKKEN_NAMED.values() if backend.token_to_id(t) is None]
    if missing:
        raise ValueError(f"{path} lacks the special tokens {missing}")
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **_TEKKEN_NAMED)


TIKTOKEN_FILE = "tiktoken.model"
# Qwen2's pre-tokenizer split (its tokenizer.json; also what vLLM's Kimi-Audio tokenizer uses, the vocabulary
# being Qwen2's 151643 tokens). Unlike transformers' TikTokenConverter default (cl100k's ``\p{N}{1,3}``), digits
# split one by one. Kimi-Audio's remote tokenization_kimia.py was not available offline to confirm its pat_str.
KIMI_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501 (verbatim)


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """A ``tiktoken.model`` file -> {token bytes: rank}: one ``<base64 token> <rank>`` per line (blank lines
    skipped), as ``tiktoken.load.load_tiktoken_bpe`` reads it but without the tiktoken package. The ranks
    must be 0..n-1, each once, and the tokens distinct (the rank is the token's id and its merge priority).
    Raises ValueError naming the file and the 1-based line of the first bad entry."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    seen: dict[int, int] = {}  # rank -> line
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"{len(fields)} fields")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as e:
            raise ValueError(f"{path} line {number}: expected '<base64 token> <integer rank>', got "
                             f"{line[:80]!r} ({e})") from None
        if token in ranks:
            raise ValueError(f"{path} line {number}: token {token!r} repeats (first at rank {ranks[token]})")
        if rank in seen:
            raise ValueError(f"{path} line {number}: rank {rank} repeats (first on line {seen[rank]})")
        ranks[token], seen[rank] = rank, number
    if sorted(seen) != list(range(len(seen))):
        missing = sorted(set(range(len(seen))) - set(seen))[:5]
        raise ValueError(f"{path}: ranks are not 0..{len(seen) - 1} (missing {missing}); a rank is a token id, so "
                         "they must be contiguous")
    return ranks


class _Converter(TikTokenConverter):
    """transformers' tiktoken -> fast-tokenizer conversion, reading the file with :func:`read_tiktoken_ranks`
    so that tiktoken is not needed at run time (its ``load_tiktoken_bpe`` is the only use)."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_tiktoken_ranks(tiktoken_url)


def _added_tokens(config: Mapping[str, Any], n_base: int, where: Path) -> list[AddedToken]:
    """tokenizer_config.json's ``added_tokens_decoder`` as AddedTokens for ids n_base, n_base + 1, ... in
    order: a fast tokenizer gives added tokens the next ids in the order they are added, so each gap in the
    listed ids is filled with a ``<|reserved_token_{id}|>`` placeholder to keep later ids where they belong."""
    listed = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        entry = {"content": entry} if isinstance(entry, str) else entry
        listed[int(key)] = AddedToken(entry["content"], single_word=entry.get("single_word", False),
                                      lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                                      normalized=entry.get("normalized", False), special=entry.get("special", True))
    below = sorted(i for i in listed if i < n_base)
    if below:
        raise ValueError(f"{where}: added tokens {[(i, listed[i].content) for i in below]} have ids below the "
                         f"{n_base} base tokens of {TIKTOKEN_FILE}; an added token cannot take a base token's id")
    top = max(listed, default=n_base - 1)
    return [listed.get(i) or AddedToken(f"<|reserved_token_{i}|>", normalized=False, special=True)
            for i in range(n_base, top + 1)]


def _named(value: Any) -> str | None:
    """A tokenizer_config.json special-token entry (a string or an AddedToken dict) -> its text."""
    return value.get("content") if isinstance(value, Mapping) else value


def kimi_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Kimi-Audio's text tokenizer from ``tiktoken.model`` + ``tokenizer_config.json``, as a fast tokenizer
    built by transformers' ``TikTokenConverter`` (no remote code is run or needed).

    Base ids are the tiktoken ranks (151643 in the released file); the added tokens get exactly the ids of
    ``added_tokens_decoder`` (151643 on; checked, a ValueError names every mismatch), and the control tokens
    must sit at :data:`KIMI_CONTROL_OFFSETS` from the base (:func:`check_kimi_control_ids`). The pad token is
    the config's ``pad_token`` when that names an existing token, else ``<|im_kimia_text_blank|>``;
    ``encode(text, add_special_tokens=False)`` (and plain ``encode``) adds no BOS/EOS: the post-processor is
    transformers' byte-level one, which adds nothing.
    """
    path = Path(directory)
    vocab_file, config_file = path / TIKTOKEN_FILE, path / "tokenizer_config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has {TIKTOKEN_FILE} but no tokenizer_config.json (its special tokens)")
    config = json.loads(config_file.read_text())
    converter = _Converter(str(vocab_file), pattern=KIMI_PATTERN)
    backend = converter.converted()
    n_base = backend.get_vocab_size(with_added_tokens=False)
    backend.add_special_tokens(_added_tokens(config, n_base, config_file))  # appended in id order
    wrong = [f"{tok['content']!r} has id {backend.token_to_id(tok['content'])}, config says {i}"
             for i, tok in ((int(k), v) for k, v in (config.get("added_tokens_decoder") or {}).items())
             if backend.token_to_id(tok["content"]) != i]
    if wrong:
        raise ValueError(f"{config_file}: added tokens did not get their listed ids: " + "; ".join(wrong))
    vocab = backend.get_vocab(with_added_tokens=True)
    # Named special tokens only when they exist: naming a missing one would append it as a new token.
    named = {k: _named(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    named = {k: v for k, v in named.items() if v is not None and v in vocab}
    named.setdefault("pad_token", "<|im_kimia_text_blank|>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                        model_max_length=config.get("model_max_length", int(1e30)), **named)
    check_kimi_control_ids(tokenizer, n_base)
    return tokenizer


def check_kimi_control_ids(tokenizer: PreTrainedTokenizerBase, n_base: int | None = None) -> dict[str, int]:
    """Checks that each Kimi-Audio control token has id ``n_base + offset`` (:data:`KIMI_CONTROL_OFFSETS`:
    ``<|im_msg_end|>`` 151645, ..., ``<|im_kimia_speech_ct_id|>`` 151675 for the released 151643 base tokens)
    and returns {token: id}. ``n_base``: the base-vocabulary size; default, the fast tokenizer's model
    vocabulary without added tokens. A ValueError names each token that is missing or elsewhere, its id
    and the expected one: the model's embeddings of these ids are what its prompts mean."""
    if n_base is None:
        n_base = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    vocab = tokenizer.get_vocab()
    found = {t: vocab.get(t) for t in KIMI_CONTROL_OFFSETS}
    wrong = [f"{t} has id {found[t]}, expected {n_base + off} (base {n_base} + {off})"
             for t, off in KIMI_CONTROL_OFFSETS.items() if found[t] != n_base + off]
    if wrong:
        raise ValueError("Kimi-Audio's control tokens are not where its model expects them: " + "; ".join(wrong))
    return found


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """-> input_ids [B, T] int32 and attention_mask [B, T] int32, left-padded with the tokenizer's pad token
    (the answer position is then the last column of every row). The prompts already hold every special
    token, so the tokenizer adds none."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; left padding a batch needs one")
    out = tokenizer(list(prompts), padding=True, padding_side="left", add_special_tokens=False, return_tensors="np")
    return {"input_ids": out["input_ids"].astype(np.int32), "attention_mask": out["attention_mask"].astype(np.int32)}


# The tokens that end a model's text answer: ChatML's end of turn (Qwen2.5-Omni, Audio Flamingo 3, Qwen2-Audio,
# SmolLM2), Kimi-Audio's text end, and the base models' end of text. Voxtral's ``</s>`` is not listed: it is the eos
# token of tekken_tokenizer, which stop_token_ids takes anyway, and as a literal it could name a plain BPE token of
# another vocabulary.
END_OF_ANSWER = ("<|im_end|>", "<|im_kimia_text_eos|>", "<|endoftext|>")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The ids after which generation stops: the tokenizer's eos token and those of :data:`END_OF_ANSWER` it has."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id, *(vocab.get(t) for t in END_OF_ANSWER)]
    out = tuple(dict.fromkeys(int(i) for i in ids if i is not None))
    if not out:
        raise ValueError("the tokenizer has no eos token and none of " + ", ".join(END_OF_ANSWER)
                         + ": generation would not know where an answer ends")
    return out
