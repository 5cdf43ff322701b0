"""MSP-Podcast across its releases: v1.11+ naming (labels_consensus.csv, Development) and v1.8-and-earlier
naming (labels_concensus.csv, Validation), Test3 with its labels withheld, a missing labels CSV."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from etils import epath

from esn_jax.data import ManualDirError, MspPodcast
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders  # the module, not its classes: pytest would collect them again here

HEADER = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
NEW = ("labels_consensus.csv", "Development")
OLD = ("labels_concensus.csv", "Validation")


def rows(dev: str):
    """(FileName, EmoClass, SpkrID, Split_Set, wav kwargs or None for no file, sub-folder of Audios/)."""
    return [("MSP-PODCAST_0001_0001.wav", "N", "1", "Train", {}, ""),
            ("MSP-PODCAST_0001_0002.wav", "H", "1", "Train", {"rate": 44100, "channels": 2}, ""),  # as one is
            ("MSP-PODCAST_0002_0001.wav", "X", "2", "Train", {}, ""),
            ("MSP-PODCAST_0003_0001.wav", "A", "3", dev, {}, "Audio1"),  # one level below Audios/
            ("MSP-PODCAST_0004_0001.wav", "S", "Unknown", "Test1", {}, ""),
            ("MSP-PODCAST_0005_0001.wav", "C", "5", "Test2", {}, "Audio1"),
            ("MSP-PODCAST_0006_0001.wav", "", "6", "Test3", {}, ""),  # Test3: labels withheld
            ("MSP-PODCAST_0006_0002.wav", "", "Unknown", "Test3", {}, "")]


def write(root: Path, naming: tuple[str, str], release: str = "", table_rows=None):
    table, dev = naming
    base = root / release
    (base / "Labels").mkdir(parents=True)
    table_rows = rows(dev) if table_rows is None else table_rows
    with open(base / "Labels" / table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for name, emo, spk, split, kind, sub in table_rows:
            w.writerow([name, emo, 4.0, 4.0, 4.0, spk, "Male", split])
            if kind is not None:
                trees.wav(base / "Audios" / sub / name, **kind)
    split = {"Train": "train", dev: "validation", "Test1": "test1", "Test2": "test2"}
    expected = {n: (split[s], e, "unknown" if spk == "Unknown" else spk) for n, e, spk, s, k, _ in table_rows
                if e not in ("X", "") and k is not None}
    return expected, {"excluded_label": 1, "no_label": 2}


class _MspRelease(test_builders._CorpusChecks):
    DATASET_CLASS = MspPodcast
    SPLITS = {"train": 2, "validation": 1, "test1": 1, "test2": 1}
    SPEAKER_DISJOINT = False  # the 'unknown' speaker may be anywhere

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        assert "test3" not in builder.info.splits  # no usable label: no split
        no_label = [f for f in builder.info.metadata["skipped"]["files"] if f["reason"] == "no_label"]
        assert {(f["split"], f["file"]) for f in no_label} == {("test3", "MSP-PODCAST_0006_0001.wav"),
                                                              ("test3", "MSP-PODCAST_0006_0002.wav")}
        assert all("Test3 labels are withheld" in f["detail"] for f in no_label)
        assert builder.info.metadata["fixed"] == {"downmixed": 1, "resampled": 1}  # the stereo 44.1 kHz file


class MspPodcastNewNamingTest(_MspRelease, tfds.testing.DatasetBuilderTestCase):
    WRITE = staticmethod(functools.partial(write, naming=NEW))


class MspPodcastOldNamingTest(_MspRelease, tfds.testing.DatasetBuilderTestCase):
    WRITE = staticmethod(functools.partial(write, naming=OLD, release="MSP-Podcast"))  # manual_dir: its parent


def test_missing_labels_csv_names_both_names_and_where_it_looked(tmp_path):
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Labels" / "labels_detailed.csv").write_text("x")
    trees.wav(tmp_path / "Audios" / "MSP-PODCAST_0001_0001.wav")
    builder = MspPodcast(data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDirError) as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
    message = str(e.value)
    for part in ("labels_consensus.csv", "labels_concensus.csv", str(tmp_path), str(tmp_path / "MSP-Podcast")):
        assert part in message, part


def _index(tmp_path: Path):
    return MspPodcast(data_dir=str(tmp_path / "out"))._index(epath.Path(tmp_path))


def test_new_name_is_read_when_both_are_there(tmp_path):
    write(tmp_path, NEW, table_rows=[("a.wav", "N", "1", "Train", None, "")])
    (tmp_path / "Labels" / OLD[0]).write_text(",".join(HEADER) + "\nb.wav,H,4,4,4,1,Male,Train\n")
    splits, _ = _index(tmp_path)
    assert [i.key for i in splits["train"]] == ["a.wav"]


def test_split_with_no_usable_label_is_not_created(tmp_path):
    write(tmp_path, NEW, table_rows=[("a.wav", "N", "1", "Train", None, ""), ("b.wav", "X", "2", "Test2", None, ""),
                                     ("c.wav", "O", "2", "Test2", None, ""), ("d.wav", "", "3", "Test3", None, ""),
                                     ("e.wav", "H", "3", "Test4", None, "")])
    splits, problems = _index(tmp_path)
    assert list(splits) == ["train"]
    assert [(p.split, p.file, p.reason) for p in problems] == [
        ("test3", "d.wav", "no_label"), ("?", "e.wav", "unknown_split"), ("test2", "b.wav", "excluded_label"),
        ("test2", "c.wav", "excluded_label")]
