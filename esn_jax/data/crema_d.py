"""CREMA-D, read from the user's clone of https://github.com/CheyneyComputerScience/CREMA-D.

(``crema_d_local``: tfds' own ``crema_d`` downloads the corpus; this one reads a local copy.)

Assumed layout (``manual_dir`` may be the clone or its parent ``CREMA-D``)::

    AudioWAV/1001_DFA_ANG_XX.wav     <actor 1001-1091>_<sentence>_<emotion>_<intensity>.wav

Labels: the emotion field (``emotions.MAPPINGS["crema_d_local"]``): NEU, HAP, SAD, ANG, FEA, DIS. Speaker:
the actor number. Splits: none are official, so speaker-disjoint train/validation/test from a seeded
permutation of the actors present (config ``seed``, default 0; fractions 0.8/0.1/0.1). A name that does not
parse is skipped as ``bad_name`` (the release holds a known empty file, skipped as ``empty``/``unreadable``).
"""

from __future__ import annotations

import re

from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, SeededSplitConfig, Skip, find_root, relative, split_by_speaker

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


class CremaDLocal(EmotionBuilder):
    """CREMA-D: 91 actors, 12 sentences, 6 emotions; speaker-disjoint seeded splits."""

    CORPUS = "crema_d_local"
    HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
    CITATION = "Cao et al., CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset, IEEE TAC 2014."
    BUILDER_CONFIGS = [SeededSplitConfig(name="seed0", description="speaker-disjoint 0.8/0.1/0.1, seed 0")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Clone https://github.com/CheyneyComputerScience/CREMA-D with git-lfs (or download AudioWAV/) and pass the
    folder holding AudioWAV/ as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "AudioWAV/*.wav", ["CREMA-D"], "AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav")

    def _index(self, root):
        found, problems = [], []
        for path in sorted((root / "AudioWAV").glob("*.wav")):
            if m := _NAME.match(path.name):
                found.append(Item(path.stem, path, m.group(3), m.group(1)))
            else:
                problems.append(Skip("?", relative(path, root), "bad_name", "expected 1001_DFA_ANG_XX.wav"))
        return split_by_speaker(found, self.builder_config), problems
