"""Log-mel features for each LALM with transformers' ``WhisperFeatureExtractor`` (numpy) and the model's
own windowing. No mel code of our own.

* Qwen2.5-Omni: the whole clip (up to 300 s) with a frame mask; the batch is trimmed to its longest clip
  rounded up to whole 200-frame chunks (the padding beyond carries nothing: the encoder drops it).
* Audio Flamingo 3: 30-s windows, at most 20 per clip (600 s), each with its own frame mask.
* Kimi-Audio: 30-s segments for Whisper-large-v3, each with its frame mask.
* Qwen2-Audio: one 30-s window per clip with its frame mask; longer clips are refused (its processor would
  silently cut them to 30 s).
* Voxtral: the whole clip padded with zeros to whole 30-s windows, its features computed at once and split
  into 3000-frame windows; no frame mask (its encoder attends to every frame of a window).

Waveforms: 1-D float arrays at 16 kHz. Output shapes: C = clips, W / S = windows / segments of all clips
in order, M = mel bins, F = frames (100 per second).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import WhisperFeatureExtractor

from ports.audio import output_lengths

SAMPLE_RATE = 16000
HOP = 160
CODE_SAMPLES = 1280  # Kimi-Audio / GLM-4-Voice: one code (12.5 Hz) per 1280 samples of a segment
WINDOW_SECONDS = 30
SILENCE_PEAK = 1e-4  # below this peak amplitude a clip is treated as silent (16-bit quantisation step ~3e-5)


class _NumpyWhisperFeatureExtractor(WhisperFeatureExtractor):
    """transformers' extractor, always on its numpy STFT. transformers switches to a torch STFT whenever torch is
    installed, and the two differ by about 4e-5 in log-mel: enough to move a near-tie and a verdict between an
    install with the test extra and one without. Features must not depend on what else is installed."""

    def _torch_extract_fbank_features(self, waveform: np.ndarray, device: str = "cpu") -> np.ndarray:
        return self._np_extract_fbank_features(waveform, device)


def extractor(n_mels: int = 128, seconds: int = WINDOW_SECONDS) -> WhisperFeatureExtractor:
    """The feature extractor of all three models (16 kHz, n_fft 400, hop 160), padding to ``seconds``; numpy
    whether or not torch is installed."""
    return _NumpyWhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP, n_fft=400,
                                         chunk_length=seconds)


def check_clips(clips: Sequence[np.ndarray], max_seconds: float, model: str) -> list[np.ndarray]:
    """Each clip as float32 1-D; raises a ValueError naming every empty, silent or too-long clip."""
    out, problems = [], []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip, np.float32)
        if clip.ndim != 1:
            problems.append(f"clip {i} has shape {clip.shape}; expected a 1-D 16 kHz waveform")
        elif clip.size == 0:
            problems.append(f"clip {i} is empty")
        elif not np.isfinite(clip).all():
            problems.append(f"clip {i} holds NaN or inf samples")
        elif np.abs(clip).max() < SILENCE_PEAK:
            problems.append(f"clip {i} is silent (peak {np.abs(clip).max():.1e} < {SILENCE_PEAK})")
        elif clip.size > max_seconds * SAMPLE_RATE:
            problems.append(f"clip {i} lasts {clip.size / SAMPLE_RATE:.1f} s; {model} accepts at most {max_seconds} s")
        out.append(clip)
    if problems:
        raise ValueError("bad audio: " + "; ".join(problems))
    return out


def qwen2_5_omni(clips: Sequence[np.ndarray], n_mels: int = 128, max_seconds: int = 300,
                 chunk_frames: int = 200) -> dict[str, np.ndarray]:
    """-> input_features [C, M, F], feature_attention_mask [C, F] (F: longest clip in whole chunks)."""
    clips = check_clips(clips, max_seconds, "Qwen2.5-Omni")
    out = extractor(n_mels, max_seconds)(clips, sampling_rate=SAMPLE_RATE, padding="max_length",
                                         return_attention_mask=True, return_tensors="np")
    mask = out["attention_mask"].astype(np.int32)
    keep = min(mask.shape[1], -(-int(mask.sum(1).max()) // chunk_frames) * chunk_frames)
    return {"input_features": out["input_features"][..., :keep].astype(np.float32),
            "feature_attention_mask": mask[:, :keep]}


def _windows(clips, n_mels, max_windows, model):
    clips = check_clips(clips, max_windows * WINDOW_SECONDS, model)
    size = WINDOW_SECONDS * SAMPLE_RATE
    pieces = [clip[s:s + size] for clip in clips for s in range(0, clip.size, size)]
    per_clip = np.array([-(-clip.size // size) for clip in clips])
    out = extractor(n_mels)(pieces, sampling_rate=SAMPLE_RATE, padding="max_length", return_attention_mask=True,
                            return_tensors="np")
    return out["input_features"].astype(np.float32), out["attention_mask"].astype(np.int32), per_clip


def audio_flamingo3(clips: Sequence[np.ndarray], n_mels: int = 128, max_windows: int = 20) -> dict[str, np.ndarray]:
    """-> input_features [W, M, 3000], input_features_mask [W, 3000], windows_per_clip [C], and
    num_audio_tokens [C] counted as transformers' processor does (on each clip's summed frames; equal to
    the model's per-window count because only a clip's last window can be partial)."""
    feats, mask, per_clip = _windows(clips, n_mels, max_windows, "Audio Flamingo 3")
    frames = np.add.reduceat(mask.sum(1), np.r_[0, np.cumsum(per_clip)[:-1]])
    tokens = output_lengths(frames)
    return {"input_features": feats, "input_features_mask": mask, "windows_per_clip": per_clip,
            "num_audio_tokens": tokens}


def qwen2_audio(clips: Sequence[np.ndarray], n_mels: int = 128) -> dict[str, np.ndarray]:
    """-> input_features [C, M, 3000], feature_attention_mask [C, 3000] and num_audio_tokens [C], as
    ``Qwen2AudioProcessor`` makes them (transformers ``processing_qwen2_audio.py``: one extractor call with
    ``padding="max_length"``, i.e. 30 s, and ``return_attention_mask``; the token count ((F - 1) // 2 + 1 - 2)
    // 2 + 1 on the valid frames F). A clip over 30 s is refused: the processor would truncate it to its first
    30 s without a word; so is one under 321 samples (no audio token)."""
    clips = check_clips(clips, WINDOW_SECONDS, "Qwen2-Audio")
    out = extractor(n_mels)(clips, sampling_rate=SAMPLE_RATE, padding="max_length", return_attention_mask=True,
                            return_tensors="np")
    mask = out["attention_mask"].astype(np.int32)
    frames = mask.sum(1)
    tokens = output_lengths(frames)
    if (tokens < 1).any():  # under 3 frames (321 samples) the processor would write no <|AUDIO|> at all
        short = [f"clip {i} has {clips[i].size} samples" for i in np.flatnonzero(tokens < 1)]
        raise ValueError(f"bad audio: {'; '.join(short)}; Qwen2-Audio needs at least {2 * HOP + 1} (3 mel frames) "
                         "for one audio token")
    return {"input_features": out["input_features"].astype(np.float32), "feature_attention_mask": mask,
            "num_audio_tokens": tokens}


# mistral-common's audio encoder (tokens/tokenizers/audio.py, with Voxtral's tekken.json audio section: 12.5 tokens/s,
# 160-sample hop, chunk_length_s 30) pads a clip to whole 30-s windows and writes ceil(frames / 8) [AUDIO]
# tokens: 3000 / 8 per window, which is also what the encoder gives (1500 frames, 4 stacked per token).
VOXTRAL_TOKENS_PER_WINDOW = 375


def voxtral(clips: Sequence[np.ndarray], n_mels: int = 128, max_windows: int = 80) -> dict[str, np.ndarray]:
    """-> input_features [W, M, 3000] (every clip's 30-s windows, in clip order), windows_per_clip [C] and
    num_audio_tokens [C] (:data:`VOXTRAL_TOKENS_PER_WINDOW` per window), as the official path makes them:
    mistral-common zero-pads each clip to a whole number of 30-s windows, and ``VoxtralProcessor``
    (``processing_voxtral.py``, ``_retrieve_input_features``) takes the log-mel of the whole padded clip in
    one extractor call (so its floor, the maximum - 8 in log10, is the clip's, and a window's edge frames see
    the next window's samples), then cuts it into 3000-frame windows. No frame mask: Voxtral's encoder attends
    to every frame. ``max_windows``: 80 (40 min, the model card's longest audio for understanding); a longer
    clip is refused."""
    clips = check_clips(clips, max_windows * WINDOW_SECONDS, "Voxtral")
    size, frames, extract = WINDOW_SECONDS * SAMPLE_RATE, WINDOW_SECONDS * SAMPLE_RATE // HOP, extractor(n_mels)
    windows = []
    for clip in clips:
        out = extract(clip, sampling_rate=SAMPLE_RATE, padding="longest", pad_to_multiple_of=size, truncation=False,
                      return_tensors="np")["input_features"][0]  # [M, frames * windows of this clip]
        windows.extend(np.split(out, out.shape[-1] // frames, axis=-1))
    per_clip = np.array([-(-clip.size // size) for clip in clips])
    return {"input_features": np.stack(windows).astype(np.float32), "windows_per_clip": per_clip,
            "num_audio_tokens": per_clip * VOXTRAL_TOKENS_PER_WINDOW}


def kimi_audio(clips: Sequence[np.ndarray], n_mels: int = 128, max_segments: int = 20) -> dict[str, np.ndarray]:
    """-> whisper_input_features [S, M, 3000], whisper_input_mask [S, 3000], segments_per_clip [C],
    num_audio_tokens [C] (12.5 Hz: ceil(samples / 1280) per segment), and the GLM-4-Voice tokenizer's own
    features tokenizer_input_features [S, M, 3000] with tokenizer_input_mask [S, 3000]. ``max_segments`` is
    our bound (the remote code sets none).

    The tokenizer's features are computed as GLM-4-Voice's ``extract_speech_token`` computes them for one
    clip (Kimi-Audio tokenizes clip by clip): the clip's 30-s segments in one extractor call, padded to the
    longest segment rounded up to whole codes (1280 samples), then zero frames up to 3000 (frames the
    tokenizer's causal convolutions and key mask never let reach a valid code). They differ from Whisper's
    30-s padded features only in the last frame of a clip whose length is a multiple of 1280 samples
    (reflected, not zero, samples past its end).
    """
    feats, mask, per_clip = _windows(clips, n_mels, max_segments, "Kimi-Audio (as configured)")
    per_segment = -(-mask.sum(1) // (CODE_SAMPLES // HOP))  # ceil(frames / 8) = ceil(samples / 1280)
    tokens = np.add.reduceat(per_segment, np.r_[0, np.cumsum(per_clip)[:-1]])
    size, frames = WINDOW_SECONDS * SAMPLE_RATE, WINDOW_SECONDS * SAMPLE_RATE // HOP
    tok_feats, tok_mask, extract = [], [], extractor(n_mels)
    for clip in map(np.asarray, clips):  # checked by _windows
        out = extract([clip[s:s + size] for s in range(0, clip.size, size)], sampling_rate=SAMPLE_RATE,
                                padding="longest", pad_to_multiple_of=CODE_SAMPLES, return_attention_mask=True,
                                return_tensors="np")
        pad = frames - out["input_features"].shape[-1]
        tok_feats.append(np.pad(out["input_features"], ((0, 0), (0, 0), (0, pad))))
        tok_mask.append(np.pad(out["attention_mask"], ((0, 0), (0, pad))))
    return {"whisper_input_features": feats, "whisper_input_mask": mask, "segments_per_clip": per_clip,
            "num_audio_tokens": tokens, "tokenizer_input_features": np.concatenate(tok_feats).astype(np.float32),
            "tokenizer_input_mask": np.concatenate(tok_mask).astype(np.int32)}
