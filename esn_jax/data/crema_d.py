"""CREMA-D, read from the user's clone of https://github.com/CheyneyComputerScience/CREMA-D.

(``crema_d_local``: tfds' own ``crema_d`` downloads the corpus; this one reads a local copy.)

Layout accepted (``manual_dir`` may be the clone or its parent ``CREMA-D``)::

    AudioWAV/1001_DFA_ANG_XX.wav     <actor 1001-1091>_<sentence>_<emotion>_<intensity>.wav

The repository keeps its audio in Git LFS: a zip download of it (or a clone without git-lfs) holds small
text pointer files in place of the wavs. If every wav of the copy is such a pointer the build stops at
once with a ManualDirError saying to run ``git lfs pull``; single pointers (an interrupted pull) are
skipped as ``lfs_pointer``. Hidden files (macOS ``._*`` AppleDouble copies) are ignored.

Labels: the emotion field (``emotions.MAPPINGS["crema_d_local"]``): NEU, HAP, SAD, ANG, FEA, DIS. Speaker:
the actor number. Splits: none are official, so speaker-disjoint train/validation/test from a seeded
permutation of the actors present (config ``seed``, default 0; fractions 0.8/0.1/0.1). Skipped: a name
that does not parse (``bad_name``); ``1076_MTI_SAD_XX``, which holds no audio in the release
(``known_bad``, see ``KNOWN_BAD``).
"""

from __future__ import annotations

import re

from etils import epath

from esn_jax.data import audio
from esn_jax.data.base import (
    EmotionBuilder,
    Item,
    ManualDirError,
    SeededSplitConfig,
    Skip,
    find_root,
    relative,
    split_by_speaker,
)

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


class CremaDLocal(EmotionBuilder):
    """CREMA-D: 91 actors, 12 sentences, 6 emotions; speaker-disjoint seeded splits."""

    CORPUS = "crema_d_local"
    HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
    CITATION = "Cao et al., CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset, IEEE TAC 2014."
    BUILDER_CONFIGS = [SeededSplitConfig(name="seed0", description="speaker-disjoint 0.8/0.1/0.1, seed 0")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Clone https://github.com/CheyneyComputerScience/CREMA-D with git-lfs installed (a zip download holds
    Git LFS pointer files, not audio; in a clone without the audio run `git lfs pull`) and pass the folder
    holding AudioWAV/ as manual_dir."""
    KNOWN_BAD = {"1076_MTI_SAD_XX": "silent in the release (the file holds no audio)"}

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "AudioWAV/*.wav", ["CREMA-D"], "AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav")

    def _index(self, root):
        paths = [p for p in sorted((root / "AudioWAV").glob("*.wav")) if not p.name.startswith(".")]
        # all() stops at the first real file: one read in the usual case, every file only for a pointer-only copy.
        if paths and all(map(audio.is_lfs_pointer, paths)):
            raise ManualDirError(
                f"every one of the {len(paths)} files in {root / 'AudioWAV'} is a Git LFS pointer (a text stub "
                f"starting {audio.LFS_POINTER.decode()!r}), not audio: a zip download of the GitHub repository "
                "does not include the LFS objects. Clone it with git-lfs installed, or run `git lfs pull` in "
                "the clone, then build again.")
        found, problems = [], []
        for path in paths:
            if m := _NAME.match(path.name):
                found.append(Item(path.stem, path, m.group(3), m.group(1)))
            else:
                problems.append(Skip("?", relative(path, root), "bad_name", "expected 1001_DFA_ANG_XX.wav"))
        return split_by_speaker(found, self.builder_config), problems
