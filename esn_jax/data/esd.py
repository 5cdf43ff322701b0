"""ESD (Emotional Speech Dataset, Zhou et al.), read from the user's copy of the release.

Assumed layout (``manual_dir`` holds the speaker folders, or a folder above them named
``Emotion Speech Dataset``)::

    <speaker 0001-0020>/<Emotion>/<speaker>_<nnnnnn>.wav     Emotion in Angry, Happy, Neutral, Sad, Surprise
    <speaker>/<speaker>.txt                                 transcripts (not read)

Speakers 0001-0010 speak Mandarin, 0011-0020 English. Wavs are found anywhere below the emotion folder
(some copies split them into train/evaluation/test sub-folders; that per-utterance split is not speaker-
disjoint and is not used). Labels: the emotion folder (``emotions.MAPPINGS["esd"]``); any other folder's
files are skipped as ``unknown_label``. Splits: speaker-disjoint seeded train/validation/test (config
``seed``; fractions 0.8/0.1/0.1).
"""

from __future__ import annotations

from etils import epath

from esn_jax.data.base import (
    EmotionBuilder,
    Item,
    SeededSplitConfig,
    files_below,
    find_root,
    relative,
    split_by_speaker,
)


class Esd(EmotionBuilder):
    """ESD: 10 Mandarin and 10 English speakers, 5 emotions, 350 parallel utterances each."""

    CORPUS = "esd"
    HOMEPAGE = "https://hltsingapore.github.io/ESD/"
    CITATION = "Zhou et al., Seen and Unseen emotional style transfer for voice conversion with a new emotional " \
               "speech dataset, ICASSP 2021."
    BUILDER_CONFIGS = [SeededSplitConfig(name="seed0", description="speaker-disjoint 0.8/0.1/0.1, seed 0")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request ESD (https://hltsingapore.github.io/ESD/), unpack it, and pass the folder holding the speaker
    folders 0001..0020 as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "[0-9][0-9][0-9][0-9]/*/", ["Emotion Speech Dataset", "ESD"],
                         "<speaker 0001-0020>/<Angry|Happy|Neutral|Sad|Surprise>/*.wav")

    def _index(self, root):
        found = []
        for speaker in sorted(p for p in root.glob("[0-9][0-9][0-9][0-9]") if p.is_dir()):
            for folder in sorted(p for p in speaker.iterdir() if p.is_dir()):
                for path in files_below(folder, "*.wav"):
                    found.append(Item(relative(path, root), path, folder.name, speaker.name))
        return split_by_speaker(found, self.builder_config), []
