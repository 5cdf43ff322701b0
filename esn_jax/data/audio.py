"""Decoding any corpus file to a 16 kHz mono float32 waveform, fixing what can be fixed.

Fixed (and counted): stereo/multichannel audio (averaged to mono) and any sample rate other than 16 kHz
(polyphase resampling). Refused with a :class:`BadAudio` reason: an unreadable or corrupt file, a file with
no audio stream, an empty one, one holding NaN/inf samples, a silent one (it would carry no cue and the
models' feature functions refuse it), a Git LFS pointer (``lfs_pointer``: the text stub a zip download of a
Git LFS repository, such as CREMA-D's, holds in place of the audio).
"""

from __future__ import annotations

import math

import av
import numpy as np
import soundfile
from etils import epath
from scipy import signal

from ports.features import SAMPLE_RATE, SILENCE_PEAK

_SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"  # how a Git LFS pointer file begins


def is_lfs_pointer(path: epath.PathLike) -> bool:
    """Whether the file is a Git LFS pointer (a text stub standing in for content not fetched)."""
    with epath.Path(path).open("rb") as f:
        return f.read(len(LFS_POINTER)) == LFS_POINTER


class BadAudio(ValueError):
    """A file that cannot become a usable waveform. ``reason``: a short code for the build summary."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """[N] at ``rate`` -> [round(N * target / rate)] float32 at ``target`` (polyphase, anti-aliased)."""
    if rate == target:
        return wave.astype(np.float32)
    g = math.gcd(rate, target)
    return signal.resample_poly(wave, target // g, rate // g).astype(np.float32)


def _decode_soundfile(f) -> tuple[np.ndarray, int]:
    data, rate = soundfile.read(f, dtype="float32", always_2d=True)
    return data.T, rate


def _decode_av(f) -> tuple[np.ndarray, int]:
    """Any container FFmpeg reads (mp4/AAC, ...): its first audio stream as planar float [C, N]."""
    with av.open(f) as container:
        if not container.streams.audio:
            raise BadAudio("no_audio_stream", "the file has no audio stream")
        stream = container.streams.audio[0]
        # Converting to planar float only (same layout and rate) so that downmix and resampling stay ours.
        to_float = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        chunks = []
        for frame in container.decode(stream):
            chunks += [f.to_ndarray() for f in to_float.resample(frame)]
        chunks += [f.to_ndarray() for f in to_float.resample(None)]
        rate = stream.rate
    if not chunks:
        return np.zeros((1, 0), np.float32), rate
    return np.concatenate(chunks, axis=1), rate


def decode(path: epath.PathLike) -> tuple[np.ndarray, list[str]]:
    """-> (waveform [N] float32 at 16 kHz, fixes applied: a subset of ["downmixed", "resampled"]).

    wav/flac/ogg go through libsndfile, everything else (and wav codecs libsndfile lacks) through PyAV.
    """
    path = epath.Path(path)
    try:
        if path.stat().length == 0:
            raise BadAudio("empty", "0-byte file")
        if is_lfs_pointer(path):
            raise BadAudio("lfs_pointer", "a Git LFS pointer file, not audio: fetch the audio with `git lfs pull` in a "
                                          "clone of the repository")
        with path.open("rb") as f:
            if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
                try:
                    data, rate = _decode_soundfile(f)
                except soundfile.LibsndfileError:
                    f.seek(0)
                    data, rate = _decode_av(f)
            else:
                data, rate = _decode_av(f)
    except BadAudio:
        raise
    except (OSError, ValueError, RuntimeError, av.FFmpegError) as e:
        raise BadAudio("unreadable", f"{type(e).__name__}: {e}") from e
    fixes = []
    if data.shape[1] == 0:
        raise BadAudio("empty", "the file holds no samples")
    if not np.isfinite(data).all():
        raise BadAudio("nan", f"{int((~np.isfinite(data)).sum())} of {data.size} samples are NaN or inf")
    if data.shape[0] > 1:
        data, fixes = data.mean(0, keepdims=True), ["downmixed"]
    wave = data[0]
    if rate != SAMPLE_RATE:
        wave, fixes = resample(wave, rate), [*fixes, "resampled"]
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise BadAudio("silent", f"peak amplitude {peak:.1e} < {SILENCE_PEAK}")
    return wave, fixes


def to_int16(wave: np.ndarray) -> np.ndarray:
    """[N] float in [-1, 1] -> [N] int16 (what the datasets store; resampling overshoot is clipped)."""
    return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)


def to_float(samples: np.ndarray) -> np.ndarray:
    """[N] int16 as stored -> [N] float32 in [-1, 1]."""
    return samples.astype(np.float32) / 32767.0
