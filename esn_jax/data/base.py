"""What every emotion builder shares: features, label mapping, audio decoding and the skip summary.

A corpus builder only indexes its release: ``_index(root) -> ({split: [Item]}, [Skip])``. The base class
maps labels (:mod:`esn_jax.data.emotions`), decodes audio (:mod:`esn_jax.data.audio`) and records every
file it cannot use, with a reason, in ``builder.info.metadata`` (saved as ``metadata.json`` next to the
dataset and reloaded with it)::

    {"skipped": {"counts": {reason: n}, "files": [{"split", "file", "reason", "detail"}]},
     "fixed": {"downmixed": n, "resampled": n}}

Features of every example: ``audio`` [N] int16 at 16 kHz mono, ``emotion`` (ClassLabel over
``EMOTIONS``), ``emotion4`` (int32: index in ``FOUR`` or -1), ``label`` (the released label), ``speaker``,
``id`` (the file's path relative to the release root, or the corpus's utterance name).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from esn_jax.data import audio, emotions
from ports.features import SAMPLE_RATE


class ManualDirError(FileNotFoundError):
    """``manual_dir`` does not hold the release: the message names the files expected and where."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One utterance found in the release, before decoding. ``file`` is None for a listed but missing file."""

    key: str
    file: epath.Path | None
    label: str
    speaker: str


@dataclasses.dataclass(frozen=True)
class Skip:
    split: str
    file: str
    reason: str
    detail: str


@dataclasses.dataclass(eq=False)
class SeededSplitConfig(tfds.core.BuilderConfig):
    """Speaker-disjoint train/validation/test fractions for corpora without an official split.

    (Not frozen: tfds' BuilderConfig, which it extends, is a mutable dataclass.)
    """

    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


def speaker_splits(speakers: Sequence[str], seed: int,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, str]:
    """{speaker: "train" | "validation" | "test"}: a seeded permutation of the sorted distinct speakers.

    Every split gets at least one speaker (so at least 3 are needed). The assignment depends on the seed
    and on the set of speakers present, not on file order.
    """
    ordered = sorted(set(speakers))
    if len(ordered) < 3:
        raise ValueError(f"a speaker-disjoint train/validation/test split needs >= 3 speakers; found {ordered}")
    n = len(ordered)
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    n_val = min(n_val, n - n_test - 1)
    perm = np.random.default_rng(seed).permutation(n)
    names = ["validation"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return {ordered[i]: names[k] for k, i in enumerate(perm)}


def find_root(manual_dir: epath.Path, marker: str, subdirs: Sequence[str], expected: str) -> epath.Path:
    """The release root: ``manual_dir`` or one of its ``subdirs`` (the release's own top folder), whichever
    holds ``marker`` (a glob). Raises ManualDirError naming what was expected and what was found."""
    candidates = [manual_dir] + [manual_dir / s for s in subdirs]
    for root in candidates:
        if root.is_dir() and any(root.glob(marker)):
            return root
    found = sorted(p.name for p in manual_dir.iterdir())[:20] if manual_dir.is_dir() else "(no such directory)"
    raise ManualDirError(f"manual_dir does not hold the release: expected {expected} in "
                         f"{' or '.join(str(c) for c in candidates)}; found {found}")


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE),
        "emotion": tfds.features.ClassLabel(names=emotions.EMOTIONS),
        "emotion4": tfds.features.Scalar(dtype=np.int32, doc="index in FOUR (neutral, happy, sad, angry) or -1"),
        "label": tfds.features.Text(doc="the corpus's own label, as released"),
        "speaker": tfds.features.Text(),
        "id": tfds.features.Text(),
    })


class EmotionBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the corpus builders. Subclasses set CORPUS, HOMEPAGE, CITATION and implement ``_index``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    CORPUS = ""
    HOMEPAGE = ""
    CITATION = ""
    # Files of the release known to be unusable (corrupt, missing, mis-cut): {item key: what is wrong}. Skipped
    # as ``known_bad`` with that detail before decoding, so the summary says why rather than how it failed.
    KNOWN_BAD: Mapping[str, str] = {}

    def __init__(self, **kwargs):
        # array_record: what tfds.data_source (random access, numpy, no TF at read time) reads.
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=features(), homepage=self.HOMEPAGE, citation=self.CITATION,
                                              metadata=tfds.core.MetadataDict())

    def _index(self, root: epath.Path) -> tuple[Mapping[str, Sequence[Item]], Sequence[Skip]]:
        raise NotImplementedError

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self._root(epath.Path(dl_manager.manual_dir))
        splits, problems = self._index(root)
        self.info.metadata["skipped"] = {"counts": {}, "files": []}
        self.info.metadata["fixed"] = {"downmixed": 0, "resampled": 0}
        for p in problems:
            self._skip(p)
        return {name: self._generate_examples(name, items) for name, items in sorted(splits.items())}

    def _skip(self, skip: Skip) -> None:
        logging.warning("%s: skipping %s (%s): %s", self.name, skip.file, skip.reason, skip.detail)
        summary = self.info.metadata["skipped"]
        summary["counts"][skip.reason] = summary["counts"].get(skip.reason, 0) + 1
        summary["files"].append(dataclasses.asdict(skip))

    def _generate_examples(self, split: str, items: Sequence[Item]) -> Iterator[tuple[str, dict]]:
        fixed = collections.Counter()
        for item in items:
            if item.key in self.KNOWN_BAD:
                self._skip(Skip(split, item.key, "known_bad", self.KNOWN_BAD[item.key]))
                continue
            try:
                emotion, emotion4 = emotions.unify(self.CORPUS, item.label)
                if item.file is None:
                    raise audio.BadAudio("missing_file", "listed by the release but not on disk")
                wave, fixes = audio.decode(item.file)
            except (emotions.LabelError, audio.BadAudio) as e:
                self._skip(Skip(split, item.key, e.reason, str(e)))
                continue
            fixed.update(fixes)
            yield item.key, {"audio": audio.to_int16(wave), "emotion": emotion, "emotion4": emotion4,
                             "label": item.label, "speaker": item.speaker, "id": item.key}
        for fix, n in fixed.items():
            self.info.metadata["fixed"][fix] += n
        logging.info("%s/%s: %d items, fixed %s, skipped so far %s", self.name, split, len(items), dict(fixed),
                     self.info.metadata["skipped"]["counts"])


def files_below(folder: epath.Path, pattern: str, depth: int = 1) -> list[epath.Path]:
    """Files matching ``pattern`` in ``folder`` and up to ``depth`` sub-folder levels (epath refuses ``**``
    globs, which would cost one request per folder on remote filesystems), sorted."""
    return sorted(p for level in range(depth + 1) for p in folder.glob("*/" * level + pattern))


def relative(path: epath.Path, root: epath.Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (example keys must not hold the user's directory)."""
    return path.relative_to(root).as_posix()


def split_by_speaker(items: Sequence[Item], config: SeededSplitConfig) -> dict[str, list[Item]]:
    """{split: items} with every speaker in exactly one split (see :func:`speaker_splits`)."""
    split_of = speaker_splits([i.speaker for i in items], config.seed, config.fractions)
    splits: dict[str, list[Item]] = {}
    for item in items:
        splits.setdefault(split_of[item.speaker], []).append(item)
    return splits
