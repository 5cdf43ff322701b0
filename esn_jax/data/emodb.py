"""EmoDB (the Berlin Database of Emotional Speech), read from the user's unpacked copy of the release.

Layout accepted (``manual_dir`` holds ``wav/``, or a folder above it named ``emodb``, ``EmoDB`` or
``download``, as the release's ``download.zip`` unpacks)::

    wav/03a01Fa.wav        <speaker><text><emotion><version>.wav
    erkennung.txt          recognition rates (Latin-1, decimal commas): not read
    lablaut/ labsilb/ silb/   phonetic and syllable annotations: not read

Only ``wav/*.wav`` is read (535 files: 10 actors, 5 women and 5 men, 10 German sentences, 16 kHz mono).
Name format, parsed strictly: two digits for the speaker (03, 08, 09, 10, 11, 12, 13, 14, 15, 16), a letter
and two digits for the text (a01 ... b10), one capital for the emotion, one small letter for the version (a;
b, c, ... where the speaker recorded the sentence again in that emotion, each kept as its own utterance).
Hidden files (macOS ``._*`` AppleDouble copies) are ignored.

Labels: the emotion letter, as released (the German initial; ``emotions.MAPPINGS["emodb"]``): W Wut/Ärger ->
angry, F Freude -> happy, T Trauer -> sad, N neutral, A Angst -> fear, E Ekel -> disgust, L Langeweile ->
boredom (its own class, the last of ``EMOTIONS``; -1 in the four-class view). Speaker: the two-digit
number. Id: the file's stem (``03a01Fa``). Splits: none are official, so speaker-disjoint train/validation/
test from a seeded permutation of the speakers present (config ``seed0``: seed 0, fractions 0.8/0.1/0.1,
which with the release's 10 speakers is 8/1/1 speakers).

Skipped: a name that does not parse (``bad_name``); a capital that is not one of the seven letters
(``unknown_label``); audio that cannot be decoded (``unreadable``, ``empty``, ...; see
:mod:`esn_jax.data.audio`). The release has no known bad file.
"""

from __future__ import annotations

import re

from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, SeededSplitConfig, Skip, find_root, relative, split_by_speaker

_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])\.wav$")


class Emodb(EmotionBuilder):
    """EmoDB: 10 German actors, 10 sentences, 7 emotions; the label is in the file name."""

    CORPUS = "emodb"
    HOMEPAGE = "http://emodb.bilderbar.info/"
    CITATION = "Burkhardt et al., A Database of German Emotional Speech, Interspeech 2005."
    BUILDER_CONFIGS = [SeededSplitConfig(name="seed0", description="speaker-disjoint 0.8/0.1/0.1, seed 0")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the release (download.zip) from http://emodb.bilderbar.info/, unpack it, and pass the folder
    holding wav/ (files such as wav/03a01Fa.wav) as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "wav/*.wav", ["emodb", "EmoDB", "download"],
                         "wav/<speaker NN><text xNN><emotion letter><version>.wav (such as wav/03a01Fa.wav)")

    def _index(self, root):
        found, problems = [], []
        for path in sorted((root / "wav").glob("*.wav")):
            if path.name.startswith("."):
                continue
            if m := _NAME.match(path.name):
                found.append(Item(path.stem, path, m.group(3), m.group(1)))
            else:
                problems.append(Skip("?", relative(path, root), "bad_name",
                                     "expected <speaker NN><text xNN><emotion letter><version>.wav, as 03a01Fa.wav"))
        return split_by_speaker(found, self.builder_config), problems
