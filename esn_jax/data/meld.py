"""MELD (Multimodal EmotionLines Dataset), read from the user's copy of ``MELD.Raw``.

Assumed layout (MELD.Raw.tar.gz with its train/dev/test archives unpacked in place; ``manual_dir`` may be
MELD.Raw or its parent)::

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    train_splits/dia{D}_utt{U}.mp4  dev_splits_complete/dia{D}_utt{U}.mp4  output_repeated_splits_test/dia{D}_utt{U}.mp4

(the folders ``train/``, ``dev/``, ``test/`` are accepted too). CSV columns used: ``Emotion``, ``Speaker``,
``Dialogue_ID``, ``Utterance_ID``. The audio track of each mp4 is decoded with PyAV (FFmpeg), downmixed
and resampled to 16 kHz. Labels (``emotions.MAPPINGS["meld"]``): neutral, joy -> happy, sadness -> sad,
anger -> angry, surprise, fear, disgust. Speaker: the character name from the CSV. Splits: the official
train / dev (-> ``validation``) / test. A CSV row whose mp4 is absent is skipped as ``missing_file``.
"""

from __future__ import annotations

import csv
import io

from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, ManualDirError, Skip, find_root

_SPLITS = {"train": ("train", ("train_splits", "train")),
           "validation": ("dev", ("dev_splits_complete", "dev")),
           "test": ("test", ("output_repeated_splits_test", "test"))}
_COLUMNS = ("Emotion", "Speaker", "Dialogue_ID", "Utterance_ID")


class Meld(EmotionBuilder):
    """MELD: utterances from the TV series Friends, 7 emotions, official train/dev/test."""

    CORPUS = "meld"
    HOMEPAGE = "https://affective-meld.github.io/"
    CITATION = "Poria et al., MELD: A Multimodal Multi-Party Dataset for Emotion Recognition in Conversations, " \
               "ACL 2019."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download MELD.Raw.tar.gz (https://affective-meld.github.io/), unpack it and the train.tar.gz, dev.tar.gz
    and test.tar.gz inside it, and pass the MELD.Raw folder (holding *_sent_emo.csv) as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "*_sent_emo.csv", ["MELD.Raw"],
                         "train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv and the folders train_splits/, "
                         "dev_splits_complete/, output_repeated_splits_test/ of dia{D}_utt{U}.mp4")

    def _index(self, root):
        splits, problems = {}, []
        for split, (prefix, folders) in _SPLITS.items():
            table = root / f"{prefix}_sent_emo.csv"
            if not table.exists():
                continue
            videos = next((root / f for f in folders if (root / f).is_dir()), None)
            if videos is None:
                raise ManualDirError(f"{table} is there but none of its video folders {list(folders)} is in {root}")
            rows = list(csv.DictReader(io.StringIO(table.read_bytes().decode("utf-8", errors="replace"))))
            missing = [c for c in _COLUMNS if rows and c not in rows[0]]
            if missing:
                raise ManualDirError(f"{table} lacks the columns {missing}; expected {list(_COLUMNS)}")
            items = []
            for line, row in enumerate(rows, start=2):
                try:
                    name = f"dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}"
                except (TypeError, ValueError):
                    problems.append(Skip(split, f"{table.name}:{line}", "bad_row",
                                         f"Dialogue_ID={row['Dialogue_ID']!r} Utterance_ID={row['Utterance_ID']!r}"))
                    continue
                path = videos / f"{name}.mp4"
                items.append(Item(f"{prefix}/{name}", path if path.exists() else None, row["Emotion"].strip(),
                                  row["Speaker"].strip()))
            splits[split] = items
        return splits, problems
