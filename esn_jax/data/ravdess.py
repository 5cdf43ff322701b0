"""RAVDESS (audio-only speech, optionally song), read from the user's unpacked Zenodo zips.

Layout accepted (``manual_dir`` holds the Actor folders, or a folder above them named
``Audio_Speech_Actors_01-24``)::

    Actor_01/03-01-05-01-02-01-01.wav   modality-channel-emotion-intensity-statement-repetition-actor

``Audio_Speech_Actors_01-24.zip`` holds the speech files (channel 01); ``Audio_Song_Actors_01-24.zip``
the song files (channel 02), unpacked into the same Actor folders. Only audio-only files (modality 03) are
read. Config ``speech`` (default) keeps channel 01; ``speech_and_song`` also keeps 02. A channel the config
reads that has no file at all is an error (ManualDirError naming the zip to unpack). Hidden files (macOS
``._*`` AppleDouble copies) are ignored.

Labels: the emotion field (``emotions.MAPPINGS["ravdess"]``): 01 neutral, 02 calm, 03 happy, 04 sad,
05 angry, 06 fearful -> fear, 07 disgust, 08 surprised -> surprise. Speaker: the actor field, which must
match the folder. Splits: none are official, so speaker-disjoint seeded train/validation/test (config
``seed``; fractions 0.8/0.1/0.1).

Skipped: a name that does not parse (``bad_name``), a file outside the config (``not_in_config``), an
actor field that is not the folder's (``inconsistent_name``). Gaps of the release that need no skipping:
there are no song files for Actor_18 (``speech_and_song`` simply has no songs from that actor) and neutral
has no strong intensity (intensity 02). The wavs carry an extra ``FLLR`` chunk before ``data``, which
breaks readers assuming a 44-byte header; libsndfile (:func:`esn_jax.data.audio.decode`) walks the chunks
and reads them right.
"""

from __future__ import annotations

import dataclasses
import re

from etils import epath

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

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$")
_ZIPS = {"01": "Audio_Speech_Actors_01-24.zip", "02": "Audio_Song_Actors_01-24.zip"}


@dataclasses.dataclass(eq=False)
class RavdessConfig(SeededSplitConfig):
    channels: tuple[str, ...] = ("01",)


class Ravdess(EmotionBuilder):
    """RAVDESS: 24 actors, 8 emotions; the label is in the file name."""

    CORPUS = "ravdess"
    HOMEPAGE = "https://zenodo.org/record/1188976"
    CITATION = "Livingstone and Russo, The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS), " \
               "PLoS ONE 2018."
    BUILDER_CONFIGS = [
        RavdessConfig(name="speech", description="audio-only speech; speaker-disjoint seeded splits"),
        RavdessConfig(name="speech_and_song", channels=("01", "02"), description="audio-only speech and song"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download Audio_Speech_Actors_01-24.zip (and optionally Audio_Song_Actors_01-24.zip) from
    https://zenodo.org/record/1188976, unpack, and pass the folder holding Actor_01..Actor_24 as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "Actor_[0-9][0-9]", ["Audio_Speech_Actors_01-24"],
                         "Actor_NN/03-01-EE-II-SS-RR-NN.wav")

    def _index(self, root):
        found, problems = [], []
        channels = self.builder_config.channels
        for path in sorted(root.glob("Actor_[0-9][0-9]/*.wav")):
            if path.name.startswith("."):
                continue
            name, m = relative(path, root), _NAME.match(path.name)
            if m is None:
                problems.append(Skip("?", name, "bad_name", "expected MM-VV-EE-II-SS-RR-AA.wav"))
            elif m.group(1) != "03" or m.group(2) not in channels:
                problems.append(Skip("?", name, "not_in_config", f"modality {m.group(1)}, channel {m.group(2)}; "
                                     f"config {self.builder_config.name} reads modality 03, channels "
                                     f"{list(channels)}"))
            elif m.group(7) != path.parent.name[-2:]:
                problems.append(Skip("?", name, "inconsistent_name", f"actor {m.group(7)} in {path.parent.name}"))
            else:
                found.append(Item(path.stem, path, m.group(3), m.group(7)))
        present = {item.key.split("-")[1] for item in found}
        if missing := [c for c in channels if c not in present]:
            raise ManualDirError(
                f"config {self.builder_config.name} reads channels {list(channels)} but {root} holds no "
                f"03-<channel>-*.wav of channel(s) {missing} in Actor_NN/: unpack "
                f"{' and '.join(_ZIPS.get(c, c) for c in missing)} into the Actor folders")
        return split_by_speaker(found, self.builder_config), problems
