"""MSP-Podcast (UT Dallas MSP lab), read from the user's copy of the release.

Layout (release 1.x; ``manual_dir`` may be the release folder or its parent ``MSP-Podcast``)::

    Labels/labels_consensus.csv   columns FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
    Audios/MSP-PODCAST_0001_0008.wav  (looked up by FileName in Audios/ or one sub-folder below)

The labels CSV read is ``Labels/labels_consensus.csv`` (v1.11 and later) or, when that is absent,
``Labels/labels_concensus.csv`` (sic: v1.8 and earlier); the build log names the one read. Neither there is
a :class:`ManualDirError` naming both and where they were looked for.

Labels: the consensus ``EmoClass`` code (``emotions.MAPPINGS["msp_podcast"]``): N neutral, H happy, S sad,
A angry, U surprise, F fear, D disgust, C contempt; X (no agreement) and O (other) are skipped with their
reason. Speaker: ``SpkrID`` (``Unknown`` stays ``unknown``: those rows are not speaker-disjoint). Splits:
the official ``Split_Set``: Train -> ``train``, Development (v1.11+) or Validation (v1.8 and earlier) ->
``validation``, Test1/Test2/Test3 -> ``test1``/``test2``/``test3``; only the sets the CSV uses, and only
those holding at least one usable label (a set whose rows all lack one is not created; its rows are skipped).

Skipped, with the reason in the build summary: a row with an empty ``EmoClass`` (``no_label``: Test3's
labels are withheld by the release); X and O (``excluded_label``); a listed file absent from ``Audios/``
(``missing_file``); an unknown ``Split_Set`` (``unknown_split``); and, as for every corpus, undecodable
audio. One release file is stereo 44.1 kHz: it is downmixed and resampled like any other.
"""

from __future__ import annotations

import csv
import io

from absl import logging
from etils import epath

from esn_jax.data import emotions
from esn_jax.data.base import EmotionBuilder, Item, ManualDirError, Skip, files_below, find_root

_SPLITS = {"Train": "train", "Development": "validation", "Validation": "validation", "Test1": "test1",
           "Test2": "test2", "Test3": "test3"}
_COLUMNS = ("FileName", "EmoClass", "SpkrID", "Split_Set")
_TABLES = ("labels_consensus.csv", "labels_concensus.csv")  # v1.11+, v1.8 and earlier (sic)


class MspPodcast(EmotionBuilder):
    """MSP-Podcast: podcast speech with consensus categorical labels and official Split_Set."""

    CORPUS = "msp_podcast"
    HOMEPAGE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html"
    CITATION = "Lotfian and Busso, Building naturalistic emotionally balanced speech corpus by retrieving " \
               "emotional speech from existing podcast recordings, IEEE TAC 2019."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request MSP-Podcast from the MSP lab (UT Dallas), unpack it, and pass the folder holding Labels/ and
    Audios/ as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "Labels/labels_con[cs]ensus.csv", ["MSP-Podcast"],
                         f"Labels/{_TABLES[0]} (v1.11+) or Labels/{_TABLES[1]} (v1.8 and earlier) and Audios/*.wav")

    def _index(self, root):
        table = next((root / "Labels" / t for t in _TABLES if (root / "Labels" / t).is_file()), None)
        if table is None:
            raise ManualDirError(f"neither {' nor '.join(_TABLES)} is in {root / 'Labels'}")
        logging.info("msp_podcast: labels from %s", table)
        rows = list(csv.DictReader(io.StringIO(table.read_bytes().decode("utf-8-sig", errors="replace"))))
        missing = [c for c in _COLUMNS if rows and c not in rows[0]]
        if missing:
            raise ManualDirError(f"{table} lacks the columns {missing}; expected {list(_COLUMNS)}")
        audios = {p.name: p for p in files_below(root / "Audios", "*.wav")}
        splits, problems = {}, []
        for row in rows:
            name, split_set = (row["FileName"] or "").strip(), (row["Split_Set"] or "").strip()
            if split_set not in _SPLITS:
                problems.append(Skip("?", name, "unknown_split", f"Split_Set={split_set!r}; expected {list(_SPLITS)}"))
                continue
            split, label = _SPLITS[split_set], (row["EmoClass"] or "").strip()
            if not label:
                why = "Test3 labels are withheld by the release" if split_set == "Test3" else "empty EmoClass"
                problems.append(Skip(split, name, "no_label", why))
                continue
            speaker = (row["SpkrID"] or "").strip()
            speaker = "unknown" if speaker.lower() == "unknown" else speaker
            splits.setdefault(split, []).append(Item(name, audios.get(name), label, speaker))
        for split in [s for s, items in splits.items() if not any(_usable(i.label) for i in items)]:
            for item in splits.pop(split):  # no usable label: no split, each row skipped with its label's reason
                try:
                    emotions.unify(self.CORPUS, item.label)
                except emotions.LabelError as e:
                    problems.append(Skip(split, item.key, e.reason, f"{e} (no usable label in {split})"))
        return splits, problems


def _usable(label: str) -> bool:
    return label in emotions.MAPPINGS["msp_podcast"]
