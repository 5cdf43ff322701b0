"""MELD (Multimodal EmotionLines Dataset), read from the user's copy of ``MELD.Raw``.

``manual_dir`` may be the release folder or its parent (holding ``MELD.Raw/`` or ``MELD/``). Each split's
CSV, ``{train,dev,test}_sent_emo.csv``, and its folder of ``dia{D}_utt{U}.mp4`` clips are looked up at the
release root and in its ``train/``, ``dev/``, ``test/`` sub-folder, so these layouts are all accepted::

    (a) flat: train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
              train_splits/  dev_splits_complete/  output_repeated_splits_test/
    (b) MELD.Raw.tar.gz as shipped, its archives unpacked in place:
              train/train_sent_emo.csv  train/train_splits/
              dev_sent_emo.csv  dev_splits_complete/  test_sent_emo.csv  output_repeated_splits_test/
    (c) the mirror with a folder per split:
              train/train_sent_emo.csv  train/train_splits/  dev/dev_sent_emo.csv  dev/dev_splits_complete/
              test/test_sent_emo.csv  test/output_repeated_splits_test/

(clips lying directly in ``train/``, ``dev/``, ``test/`` are accepted too). A split whose CSV or clip folder
is in none of these places is an error (:class:`ManualDirError` naming every path searched), never a
silent omission. CSV columns read: ``Emotion``, ``Speaker``, ``Dialogue_ID``, ``Utterance_ID``; the CSVs'
stray U+0092 (a cp1252 apostrophe) becomes ``'`` in them. ``Utterance`` and ``StartTime``/``EndTime`` are
never parsed (some timestamps have a one-digit hour; such a row loads like any other). The audio track
of each mp4 (48 kHz, stereo or 6-channel) is decoded with PyAV (FFmpeg), downmixed and resampled to 16 kHz.
Labels (``emotions.MAPPINGS["meld"]``): neutral, joy -> happy, sadness -> sad, anger -> angry, surprise, fear,
disgust. Speaker: the character name from the CSV. Splits: the official train / dev (-> ``validation``) /
test; example ids ``train/dia0_utt0``, ``dev/...``, ``test/...``.

Skipped, with the reason in the build summary: the release's known bad files (``known_bad``, see
``Meld.KNOWN_BAD``: train dia125_utt3 is corrupt, dev dia110_utt7 is missing, test dia220_utt0 and
dia38_utt4 are mis-cut, minutes long); a CSV row whose mp4 is absent (``missing_file``); a row without
integer ids (``bad_row``); a clip in a split's folder that its CSV does not list, such as
``final_videos_test*.mp4`` (``unlabelled_file``, one per clip); and, as for every corpus, undecodable
audio and labels outside the mapping.
"""

from __future__ import annotations

import csv
import io

from absl import logging
from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, ManualDirError, Skip, find_root, relative

# split -> (file prefix and sub-folder, clip folder name)
_SPLITS = {"train": ("train", "train_splits"),
           "validation": ("dev", "dev_splits_complete"),
           "test": ("test", "output_repeated_splits_test")}
_COLUMNS = ("Emotion", "Speaker", "Dialogue_ID", "Utterance_ID")
_RELEASE_FOLDERS = ["MELD.Raw", "MELD"]


def _field(row: dict, column: str) -> str:
    """A CSV field as read: stripped, with the release's stray U+0092 (cp1252's apostrophe) made ``'``."""
    return (row[column] or "").replace("\x92", "'").strip()


def _locate(root: epath.Path, prefix: str, folder: str) -> tuple[epath.Path | None, epath.Path | None, list[str]]:
    """(the split's CSV, its clip folder, every path searched): the CSV in the root or its ``prefix``
    sub-folder; the clip folder (one holding mp4s) beside the CSV, in the root or in that sub-folder."""
    sub = root / prefix
    searched = []
    table = None
    for place in (root, sub):
        candidate = place / f"{prefix}_sent_emo.csv"
        searched.append(str(candidate))
        if candidate.is_file():
            table = candidate
            break
    places = list(dict.fromkeys([*([table.parent] if table is not None else []), root, sub]))
    videos = None
    for candidate in [p / folder for p in places] + [sub]:
        if str(candidate) not in searched:
            searched.append(str(candidate))
        if candidate.is_dir() and any(candidate.glob("*.mp4")):
            videos = candidate
            break
    return table, videos, searched


class Meld(EmotionBuilder):
    """MELD: utterances from the TV series Friends, 7 emotions, official train/dev/test."""

    CORPUS = "meld"
    HOMEPAGE = "https://affective-meld.github.io/"
    CITATION = "Poria et al., MELD: A Multimodal Multi-Party Dataset for Emotion Recognition in Conversations, " \
               "ACL 2019."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download MELD.Raw.tar.gz (https://affective-meld.github.io/), unpack it and the train.tar.gz, dev.tar.gz
    and test.tar.gz inside it, and pass the MELD.Raw folder as manual_dir (the CSVs and clip folders may sit
    at its top or in train/, dev/, test/ sub-folders)."""
    KNOWN_BAD = {
        "train/dia125_utt3": "train_splits/dia125_utt3.mp4 is corrupt in the release",
        "dev/dia110_utt7": "dev_splits_complete/dia110_utt7.mp4 is missing from the release",
        "test/dia220_utt0": "output_repeated_splits_test/dia220_utt0.mp4 is mis-cut in the release (minutes long)",
        "test/dia38_utt4": "output_repeated_splits_test/dia38_utt4.mp4 is mis-cut in the release (minutes long)",
    }

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        expected = ("train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv (at the top or in train/, dev/, "
                    "test/) and the folders train_splits/, dev_splits_complete/, output_repeated_splits_test/ "
                    "of dia{D}_utt{U}.mp4")
        try:  # a CSV at the top (layouts a, b) ...
            return find_root(manual_dir, "*_sent_emo.csv", _RELEASE_FOLDERS, expected)
        except ManualDirError:  # ... or only in the per-split folders (layout c)
            return find_root(manual_dir, "*/*_sent_emo.csv", _RELEASE_FOLDERS, expected)

    def _index(self, root):
        located, absent = {}, []
        for split, (prefix, folder) in _SPLITS.items():
            table, videos, searched = _locate(root, prefix, folder)
            if table is None or videos is None:
                what = f"no {prefix}_sent_emo.csv" if table is None else f"no {folder}/ of mp4 clips for {table}"
                absent.append(f"split {split!r}: {what}; searched {', '.join(searched)}")
            located[split] = (prefix, table, videos)
        if absent:
            raise ManualDirError("MELD release incomplete (every split is required): " + "; ".join(absent))
        splits, problems = {}, []
        for split, (prefix, table, videos) in located.items():
            logging.info("meld/%s: %s with the clips in %s", split, table, videos)
            rows = list(csv.DictReader(io.StringIO(table.read_bytes().decode("utf-8-sig", errors="replace"))))
            missing = [c for c in _COLUMNS if rows and c not in rows[0]]
            if missing:
                raise ManualDirError(f"{table} lacks the columns {missing}; expected {list(_COLUMNS)}")
            clips = {p.name: p for p in videos.glob("*.mp4")}
            items, listed = [], set()
            for line, row in enumerate(rows, start=2):
                try:
                    name = f"dia{int(_field(row, 'Dialogue_ID'))}_utt{int(_field(row, 'Utterance_ID'))}"
                except ValueError:
                    problems.append(Skip(split, f"{table.name}:{line}", "bad_row",
                                         f"Dialogue_ID={row['Dialogue_ID']!r} Utterance_ID={row['Utterance_ID']!r}"))
                    continue
                listed.add(f"{name}.mp4")
                items.append(Item(f"{prefix}/{name}", clips.get(f"{name}.mp4"), _field(row, "Emotion"),
                                  _field(row, "Speaker")))
            for clip in sorted(set(clips) - listed):
                problems.append(Skip(split, relative(clips[clip], root), "unlabelled_file",
                                     f"a clip in {videos.name}/ that {table.name} does not list"))
            splits[split] = items
        return splits, problems
