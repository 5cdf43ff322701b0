"""A tiny Voxtral-style ``tekken.json``: the released file's layout, special tokens (at their real ids), split
pattern and audio section, but 256 byte tokens and a few merges instead of its ~150k BPE tokens.

Importable by any test: ``write_tekken(tmp_path)`` then ``ports.prompts.load_tokenizer(tmp_path)``, or
mistral-common's ``MistralTokenizer.from_file(tmp_path / "tekken.json")`` as the reference.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

N_SPECIAL = 1000  # default_num_special_tokens of the released file: BPE token of rank r has id 1000 + r
# The named special tokens of Voxtral's tekken.json, {id: text}: ids 0-19 as in every tekken file
# (mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS), [AUDIO] 24 (config.json audio_token_id, VoxtralProcessor's
# audio_token_id), [BEGIN_AUDIO] 25 and [TRANSCRIBE] 34 (as integrations pin them). A v7 file lists every id below
# 1000; those not named here are <SPECIAL_{id}> (also mistral-common's filler name).
SPECIAL_TOKENS = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
                  6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]",
                  11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]",
                  17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: "[AUDIO]",
                  25: "[BEGIN_AUDIO]", 34: "[TRANSCRIBE]"}
# config.pattern of the 131k-token tekken vocabulary (as in mistral-common's own tekken_240911.json; Voxtral's
# decoder has that vocabulary size, 131072).
PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
           r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
# Voxtral's audio section: 16 kHz, 12.5 tokens/s, audio padded to whole 30-s chunks, Whisper's 128-bin log-mel
# (the values integrations pin; VoxtralProcessor's pad_to_multiple_of=480000 agrees).
AUDIO = {"sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0,
         "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}}
# Words (as the split leaves them, with their leading space) that become one token each.
WORDS = ("What", " emotion", " is", " this", "?", " neutral", " happy", " sad", " angry", "neutral", "happy", "sad",
         "angry", " the", " speaker", "Be", " brief", ".", "ing", "  ", "\n\n", "你好", " 情绪")
# Tokens past default_vocab_size: in the file, never used (mistral-common and the converter cut them).
BEYOND = (" feel", " feeling")


def ranks_for(words: Iterable[str]) -> dict[bytes, int]:
    """{token bytes: rank}: the 256 bytes in byte order (tekken's first 256 ranks are the bytes themselves),
    then each word's UTF-8 prefixes from length 2 up, each new one taking the next rank, so that BPE rebuilds
    each word as one token."""
    ranks = {bytes([b]): b for b in range(256)}
    for word in words:
        data = word.encode()
        for end in range(2, len(data) + 1):
            ranks.setdefault(data[:end], len(ranks))
    return ranks


def write_tekken(directory: str | Path, words: Iterable[str] = WORDS, beyond: Iterable[str] = BEYOND,
                 version: str = "v7") -> Path:
    """Writes ``tekken.json`` into ``directory`` and returns the directory: vocab = :func:`ranks_for` of
    ``words`` then ``beyond``, ``default_vocab_size`` = 1000 + the ranks of ``words`` only (so ``beyond``'s
    tokens lie past it, as the released file's last ~20k do), the real special tokens and pattern."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    used = ranks_for(words)
    ranks = ranks_for([*words, *beyond])

    def text(token: bytes) -> str | None:
        try:
            return token.decode()
        except UnicodeDecodeError:
            return None

    vocab = [{"rank": r, "token_bytes": base64.b64encode(t).decode(), "token_str": text(t)} for t, r in ranks.items()]
    special = [{"rank": i, "token_str": SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
               for i in range(N_SPECIAL)]
    data = {"config": {"pattern": PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": N_SPECIAL + len(used),
                       "default_num_special_tokens": N_SPECIAL, "version": version},
            "vocab": vocab, "special_tokens": special, "audio": AUDIO}
    (directory / "tekken.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return directory


def pcm16(wave):
    """``wave`` rounded to 16-bit PCM levels (k / 32768), which a WAV file carries exactly: mistral-common takes
    audio as an encoded file, so only such samples reach its encoder unchanged."""
    import numpy as np

    return (np.round(np.asarray(wave, np.float64) * 32768) / 32768).astype(np.float32)


def mistral_common_chat(tekken: str | Path, wave, question: str):
    """mistral-common's encoding of one user message holding ``wave`` (16 kHz, sent as a 16-bit WAV chunk, as
    a client sends audio) then ``question``, with the tokenizer of ``tekken`` (``tekken.json``): its Tokenized
    (``tokens``, and ``audios`` holding the padded waveform that VoxtralProcessor turns into features).
    Needs mistral-common (the test extra)."""
    from mistral_common.audio import Audio
    from mistral_common.protocol.instruct.chunk import AudioChunk, RawAudio, TextChunk
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tokenizer = MistralTokenizer.from_file(str(tekken))
    audio = AudioChunk(input_audio=RawAudio(data=Audio(wave, 16000, "wav").to_base64("wav"), format="wav"))
    request = ChatCompletionRequest(messages=[UserMessage(content=[audio, TextChunk(text=question)])])
    return tokenizer.encode_chat_completion(request)


def write_tekken_from_wheel(directory: str | Path) -> Path:
    """A Voxtral-layout ``tekken.json`` over a REAL 131k tekken vocabulary: mistral-common's own
    ``data/tekken_240911.json`` (its 150000 BPE tokens, cut at 131072 ids, and pattern) made a v7 file with
    :data:`SPECIAL_TOKENS` listed and :data:`AUDIO`. Needs mistral-common (the test extra). Returns ``directory``."""
    import mistral_common

    data = json.loads((Path(mistral_common.__file__).parent / "data" / "tekken_240911.json").read_text())
    data["config"]["version"] = "v7"
    data.pop("image", None)
    data["special_tokens"] = [{"rank": i, "token_str": SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                              for i in range(data["config"]["default_num_special_tokens"])]
    data["audio"] = AUDIO
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tekken.json").write_text(json.dumps(data), encoding="utf-8")
    return directory
