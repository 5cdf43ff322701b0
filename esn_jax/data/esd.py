"""ESD (Emotional Speech Dataset, Zhou et al.), read from the user's copy of the release.

Layouts accepted (``manual_dir`` holds the speaker folders, or a folder above them named
``Emotion Speech Dataset`` or ``ESD``)::

    <speaker 0001-0020>/<Emotion>/{train,evaluation,test}/<speaker>_<nnnnnn>.wav    the original release
    <speaker 0001-0020>/<Emotion>/<speaker>_<nnnnnn>.wav                            flattened copies
    <speaker>/<speaker>.txt          <id><TAB><text><TAB><emotion> per line

Emotion folders: Angry, Happy, Neutral, Sad, Surprise. Speakers 0001-0010 speak Mandarin, 0011-0020
English. The train/evaluation/test sub-folders (a per-utterance split that is not speaker-disjoint) are
read but not used as splits. Hidden files (macOS ``._*`` AppleDouble copies) are ignored.

Labels: the emotion folder (``emotions.MAPPINGS["esd"]``); any other folder's files are skipped as
``unknown_label``. The speaker's transcript file states every utterance's emotion a second time, and the
two are cross-checked; the folder wins, because it is what the release is organised by and what every
ESD user trains on (each folder holds the fixed id range of one emotion), while the txt files were
written by hand: mixed encodings (UTF-16LE with or without BOM, GB2312/GBK, ASCII/UTF-8), spaces in
place of tabs on some lines, the Mandarin speakers' emotions written in Chinese (中立 Neutral, 生气
Angry, 快乐 Happy, 伤心 Sad, 惊喜 Surprise). Disagreements are reported, not resolved silently, in
``builder.info.metadata["cross_check"]`` (saved with the dataset)::

    {"agree": n, "disagree": n, "no_txt_line": n,      # every wav found is counted exactly once
     "examples": [{"id", "folder", "txt", "txt_file"}, ...],   # the first EXAMPLES disagreements
     "unreadable_txt": [{"file", "detail"}, ...]}      # txt files no encoding decodes (not fatal)

``no_txt_line``: the speaker has no (readable) txt, or it holds no line for the id whose last field is
an ESD emotion. A disagreement is not a skipped file: the utterance is kept with its folder's label.

Splits: speaker-disjoint seeded train/validation/test (config ``seed``; fractions 0.8/0.1/0.1). No file of
the release is known to be unusable.
"""

from __future__ import annotations

import codecs

from absl import logging
from etils import epath

from esn_jax.data.base import (
    EmotionBuilder,
    Item,
    ManualDirError,
    SeededSplitConfig,
    files_below,
    find_root,
    relative,
    split_by_speaker,
)

EXAMPLES = 10  # disagreements listed in the cross-check summary
# The Mandarin speakers' transcripts name the emotion in Chinese.
_CHINESE = {"中立": "Neutral", "生气": "Angry", "快乐": "Happy", "伤心": "Sad", "惊喜": "Surprise"}
_ENGLISH = {e.lower(): e for e in _CHINESE.values()}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode_text(data: bytes) -> str:
    """A transcript's bytes as text, whatever encoding it was saved in: a BOM decides; else NUL bytes mean
    UTF-16 (LE when they fall on odd offsets, as the ASCII ids and tabs do); else UTF-8, then GB18030 (a
    superset of GB2312 and GBK). Raises UnicodeDecodeError when none fits."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(encoding)
    head = data[:4096]
    if b"\x00" in head:
        return data.decode("utf-16-le" if head[1::2].count(0) >= head[0::2].count(0) else "utf-16-be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def emotion_name(label: str) -> str | None:
    """An emotion as a transcript or folder writes it (English in any case, or Chinese) -> the folder name
    (``Angry``, ...), or None if it is not one of ESD's five."""
    label = label.strip()
    return _CHINESE.get(label) or _ENGLISH.get(label.lower())


def parse_transcript(text: str) -> dict[str, str]:
    """{utterance id: emotion as written} from a transcript's lines: fields split on tabs, or on runs of
    whitespace where a line has no tab; the first field is the id, the last the emotion. Lines with fewer
    than two fields are ignored."""
    labels = {}
    for line in text.splitlines():
        line = line.strip().lstrip("\ufeff")
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        fields = [f for f in fields if f]
        if len(fields) >= 2:
            labels[fields[0]] = fields[-1]
    return labels


class Esd(EmotionBuilder):
    """ESD: 10 Mandarin and 10 English speakers, 5 emotions, 350 parallel utterances each."""

    CORPUS = "esd"
    HOMEPAGE = "https://hltsingapore.github.io/ESD/"
    CITATION = "Zhou et al., Seen and Unseen emotional style transfer for voice conversion with a new emotional " \
               "speech dataset, ICASSP 2021."
    BUILDER_CONFIGS = [SeededSplitConfig(name="seed0", description="speaker-disjoint 0.8/0.1/0.1, seed 0")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request ESD (https://hltsingapore.github.io/ESD/), unpack it, and pass the folder holding the speaker
    folders 0001..0020 (or the "Emotion Speech Dataset" folder above them) as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "[0-9][0-9][0-9][0-9]/*/", ["Emotion Speech Dataset", "ESD"],
                         "<speaker 0001-0020>/<Angry|Happy|Neutral|Sad|Surprise>/[train|evaluation|test/]*.wav")

    def _index(self, root):
        found = []
        check = {"agree": 0, "disagree": 0, "no_txt_line": 0, "examples": [], "unreadable_txt": []}
        for speaker in sorted(p for p in root.glob("[0-9][0-9][0-9][0-9]") if p.is_dir()):
            txt = speaker / f"{speaker.name}.txt"
            transcript = self._transcript(txt, root, check) if txt.is_file() else {}
            for folder in sorted(p for p in speaker.iterdir() if p.is_dir()):
                for path in files_below(folder, "*.wav"):
                    if path.name.startswith("."):
                        continue
                    item = Item(relative(path, root), path, folder.name, speaker.name)
                    found.append(item)
                    written = transcript.get(path.stem)
                    if written is None:
                        check["no_txt_line"] += 1
                    elif emotion_name(written) == emotion_name(folder.name):
                        check["agree"] += 1
                    else:
                        check["disagree"] += 1
                        if len(check["examples"]) < EXAMPLES:
                            check["examples"].append({"id": item.key, "folder": folder.name, "txt": written,
                                                      "txt_file": relative(txt, root)})
        if not found:
            raise ManualDirError(f"no ESD audio in {root}: expected <speaker>/<Emotion>/*.wav or "
                                 "<speaker>/<Emotion>/{train,evaluation,test}/*.wav")
        if check["disagree"]:
            logging.warning("%s: %d utterances' emotion folder disagrees with their transcript (the folder's label "
                            "is kept), e.g. %s", self.name, check["disagree"], check["examples"][:3])
        # Set here, where the counts are made; the base class adds its own keys after _index, beside this one.
        self.info.metadata["cross_check"] = check
        return split_by_speaker(found, self.builder_config), []

    def _transcript(self, txt: epath.Path, root: epath.Path, check: dict) -> dict[str, str]:
        """{id: emotion as written} of one speaker's txt, only the lines whose last field is an emotion; {}
        (and the file listed in ``check["unreadable_txt"]``) if no encoding decodes it."""
        try:
            lines = parse_transcript(decode_text(txt.read_bytes()))
        except UnicodeDecodeError as e:
            logging.warning("%s: cannot decode %s (%s): its labels are not cross-checked", self.name, txt, e)
            check["unreadable_txt"].append({"file": relative(txt, root), "detail": f"UnicodeDecodeError: {e}"})
            return {}
        return {key: label for key, label in lines.items() if emotion_name(label) is not None}
