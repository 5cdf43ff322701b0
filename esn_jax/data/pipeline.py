"""From a built split to fixed-shape model batches: read (``tfds.data_source``, numpy, no TF graph),
resample, bucket by length, batch, and compute each model's features with ``ports.features``.

jit compiles once per input shape, so every batch of a bucket has the same shapes: a bucket of ``s``
seconds holds clips of at most ``s`` seconds; a short last batch is filled by repeating its last clip with
``valid`` False; the features are padded to the bucket's full length (padding frames carry a zero mask,
which the encoders ignore). Clips longer than the largest bucket are truncated to it (``long_clips=
"truncate"``) or dropped (``"drop"``, counted in :attr:`Batches.dropped`).

Shapes: B = batch_size. ``Batch.features`` are the model's feature dict (see ``ports.features``):
qwen2_5_omni ``input_features`` [B, M, F_s], ``feature_attention_mask`` [B, F_s] with F_s = 100·s rounded
up to whole 200-frame chunks; audio_flamingo3 / kimi_audio / voxtral windows [B·W_s, M, 3000] with W_s =
ceil(s / 30) (trailing windows belong to no clip: all-masked, or for voxtral, which has no mask, all-zero
padding that ``windows_per_clip`` leaves out); qwen2_audio one window per clip, ``input_features`` [B, M, F]
and ``feature_attention_mask`` [B, F]. audio_flamingo3 (when one window holds the bucket) and qwen2_audio
(always: its buckets are at most 30 s) are cut to F = 100·s + 2 frames rounded up to even: both encoders
mask the keys past a clip's end, so the frames beyond change no clip's tokens (exact: see
``ports.audio.AudioEncoder``). voxtral's windows are never cut: its encoder attends to every frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from esn_jax.data import audio
from ports import features as model_features
from ports.features import SAMPLE_RATE

FEATURES = {"qwen2_5_omni": model_features.qwen2_5_omni, "audio_flamingo3": model_features.audio_flamingo3,
            "kimi_audio": model_features.kimi_audio, "qwen2_audio": model_features.qwen2_audio,
            "voxtral": model_features.voxtral}
# Models whose one-window features are cut after the bucket (module docstring): the arrays cut.
_CUT = {"audio_flamingo3": ("input_features", "input_features_mask"),
        "qwen2_audio": ("input_features", "feature_attention_mask")}
_CHUNK_FRAMES = 200  # Qwen2.5-Omni's encoder chunk (2 * n_window)
_FRAMES_PER_SECOND = SAMPLE_RATE // model_features.HOP


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """model: a key of FEATURES; view: "full" (labels = ``emotion``) or "four" (``emotion4``; other clips
    are left out); buckets: ascending clip lengths in seconds."""

    model: str = "qwen2_5_omni"
    batch_size: int = 8
    buckets: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 30.0)
    long_clips: str = "truncate"
    view: str = "full"
    n_mels: int = 128

    def __post_init__(self):
        if self.model not in FEATURES:
            raise ValueError(f"model={self.model!r}; expected one of {sorted(FEATURES)}")
        if self.view not in ("full", "four"):
            raise ValueError(f"view={self.view!r}; expected 'full' or 'four'")
        if self.long_clips not in ("truncate", "drop"):
            raise ValueError(f"long_clips={self.long_clips!r}; expected 'truncate' or 'drop'")
        if list(self.buckets) != sorted(self.buckets) or not self.buckets:
            raise ValueError(f"buckets={self.buckets} must be a non-empty ascending sequence of seconds")
        if self.model == "qwen2_audio" and self.buckets[-1] > model_features.WINDOW_SECONDS:
            raise ValueError(f"buckets={self.buckets}: qwen2_audio takes clips of at most "
                             f"{model_features.WINDOW_SECONDS} s, so its buckets must not exceed that (longer clips "
                             "are then truncated or dropped by long_clips)")


@dataclasses.dataclass(frozen=True)
class Example:
    """wave [N] float32 at 16 kHz; label: index in EMOTIONS ("full") or FOUR ("four")."""

    wave: np.ndarray
    label: int
    speaker: str
    id: str


@dataclasses.dataclass(frozen=True)
class Batch:
    """features: the model's dict (module docstring); labels [B] int32; valid [B] bool; seconds: the bucket."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    valid: np.ndarray
    speakers: tuple[str, ...]
    ids: tuple[str, ...]
    seconds: float


def read(name: str, split: str, data_dir: str | None = None, view: str = "full") -> Iterator[Example]:
    """The examples of a built split, in stored order, resampled to 16 kHz if the dataset is not."""
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return examples(source, source.dataset_info.features["audio"].sample_rate, view)


def examples(records: Iterable[dict], sample_rate: int = SAMPLE_RATE, view: str = "full") -> Iterator[Example]:
    """Records as stored (``audio`` int16 or float, ``emotion``, ``emotion4``, ``speaker``, ``id``) -> Examples."""
    for r in records:
        label = int(r["emotion4"] if view == "four" else r["emotion"])
        if label < 0:
            continue
        wave = r["audio"]
        wave = audio.to_float(wave) if wave.dtype == np.int16 else wave.astype(np.float32)
        yield Example(audio.resample(wave, sample_rate), label, _text(r["speaker"]), _text(r["id"]))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def bucket_of(n_samples: int, buckets: Sequence[float]) -> float | None:
    """The smallest bucket (seconds) holding ``n_samples``; None when longer than all."""
    return next((b for b in buckets if n_samples <= b * SAMPLE_RATE), None)


class Batches:
    """Iterates Batch objects over ``examples``; ``dropped`` counts the clips left out as too long."""

    def __init__(self, examples: Iterable[Example], config: PipelineConfig):
        self.examples, self.config, self.dropped = examples, config, 0

    def __iter__(self) -> Iterator[Batch]:
        for group, seconds in self.groups():
            yield make_batch(group, seconds, self.config)

    def groups(self) -> Iterator[tuple[list[Example], float]]:
        """Each batch's examples (before padding) and its bucket, in :meth:`__iter__`'s order, without features."""
        cfg = self.config
        pending: dict[float, list[Example]] = {b: [] for b in cfg.buckets}
        longest = cfg.buckets[-1]
        for ex in self.examples:
            bucket = bucket_of(ex.wave.size, cfg.buckets)
            if bucket is None:
                if cfg.long_clips == "drop":
                    self.dropped += 1
                    continue
                bucket, ex = longest, dataclasses.replace(ex, wave=ex.wave[:int(longest * SAMPLE_RATE)])
            pending[bucket].append(ex)
            if len(pending[bucket]) == cfg.batch_size:
                yield pending[bucket], bucket
                pending[bucket] = []
        for bucket, rest in pending.items():
            if rest:
                yield rest, bucket


def make_batch(group: Sequence[Example], seconds: float, config: PipelineConfig) -> Batch:
    """Up to batch_size examples of one bucket -> a Batch of exactly batch_size rows (module docstring)."""
    n = len(group)
    rows = list(group) + [group[-1]] * (config.batch_size - n)
    clips = [ex.wave for ex in rows]
    if config.model == "qwen2_5_omni":
        feats = FEATURES["qwen2_5_omni"](clips, n_mels=config.n_mels, max_seconds=math.ceil(seconds))
        frames = math.ceil(seconds * _FRAMES_PER_SECOND / _CHUNK_FRAMES) * _CHUNK_FRAMES
        feats = {k: _pad_axis(v, -1, frames) for k, v in feats.items()}
    else:
        windows = math.ceil(seconds / model_features.WINDOW_SECONDS)
        feats = FEATURES[config.model](clips, n_mels=config.n_mels)
        feats = {k: _pad_axis(v, 0, config.batch_size * windows) if v.ndim > 1 else v for k, v in feats.items()}
        if config.model in _CUT and windows == 1:
            # AF3 and Qwen2-Audio mask the keys past a clip, so a window cut 2 frames after the bucket's end (the
            # encoder's convolutions reach 2 frames) gives every clip the same tokens as the whole 30-s window.
            frames = 2 * math.ceil((seconds * _FRAMES_PER_SECOND + 2) / 2)
            feats = {k: v[..., :frames] if k in _CUT[config.model] else v for k, v in feats.items()}
    return Batch(features=feats, labels=np.array([ex.label for ex in rows], np.int32),
                 valid=np.arange(config.batch_size) < n, speakers=tuple(ex.speaker for ex in rows),
                 ids=tuple(ex.id for ex in rows), seconds=seconds)


def _pad_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return np.pad(x, pad)
