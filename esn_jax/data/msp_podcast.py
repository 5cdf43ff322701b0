"""MSP-Podcast (UT Dallas MSP lab), read from the user's copy of the release.

Assumed layout (release 1.x; ``manual_dir`` may be the release folder or its parent ``MSP-Podcast``)::

    Labels/labels_consensus.csv   columns FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
    Audios/MSP-PODCAST_0001_0008.wav  (looked up by FileName in Audios/ or one sub-folder below)

Labels: the consensus ``EmoClass`` code (``emotions.MAPPINGS["msp_podcast"]``): N neutral, H happy, S sad,
A angry, U surprise, F fear, D disgust, C contempt; X (no agreement) and O (other) are skipped with their
reason. Speaker: ``SpkrID`` (``Unknown`` stays ``unknown``: those rows are not speaker-disjoint). Splits:
the official ``Split_Set``: Train -> ``train``, Development -> ``validation``, Test1/Test2/Test3 ->
``test1``/``test2``/``test3`` (only the sets the CSV uses).
"""

from __future__ import annotations

import csv
import io

from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, ManualDirError, Skip, files_below, find_root

_SPLITS = {"Train": "train", "Development": "validation", "Test1": "test1", "Test2": "test2", "Test3": "test3"}
_COLUMNS = ("FileName", "EmoClass", "SpkrID", "Split_Set")


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
        return find_root(manual_dir, "Labels/labels_consensus.csv", ["MSP-Podcast"],
                         "Labels/labels_consensus.csv and Audios/*.wav")

    def _index(self, root):
        table = root / "Labels" / "labels_consensus.csv"
        rows = list(csv.DictReader(io.StringIO(table.read_bytes().decode("utf-8", errors="replace"))))
        missing = [c for c in _COLUMNS if rows and c not in rows[0]]
        if missing:
            raise ManualDirError(f"{table} lacks the columns {missing}; expected {list(_COLUMNS)}")
        audios = {p.name: p for p in files_below(root / "Audios", "*.wav")}
        splits, problems = {}, []
        for row in rows:
            name, split_set = row["FileName"].strip(), row["Split_Set"].strip()
            if split_set not in _SPLITS:
                problems.append(Skip("?", name, "unknown_split", f"Split_Set={split_set!r}; expected {list(_SPLITS)}"))
                continue
            speaker = row["SpkrID"].strip()
            speaker = "unknown" if speaker.lower() == "unknown" else speaker
            splits.setdefault(_SPLITS[split_set], []).append(
                Item(name, audios.get(name), row["EmoClass"].strip(), speaker))
        return splits, problems
