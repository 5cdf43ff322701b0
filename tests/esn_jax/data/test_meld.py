"""MELD as its owners and mirrors ship it: the three layouts (flat, MELD.Raw as shipped, a folder per split),
the release's known bad clips, unlabelled clips, 6-channel 48 kHz tracks, U+0092 in the CSV text, one-digit
hour timestamps, and a missing split as an error naming what was searched."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from etils import epath

from esn_jax.data import ManualDirError, Meld
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders  # the module, not its classes: pytest would collect them again here

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]
FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
SPLIT = {"train": "train", "dev": "validation", "test": "test"}
# prefix -> rows (speaker, emotion, dialogue, utterance, start time, clip: "good" | "6ch" | "corrupt" | None)
ROWS = {
    "train": [("Joey", "joy", 0, 0, "00:16:16,059", "6ch"),  # 5.1 AAC at 48 kHz, as some clips are
              ("Rachel", "neutral", 0, 1, "00:16:21,731", "good"),
              ("Joey\x92s Date", "surprise", 1, 0, "00:02:10,000", "good"),  # U+0092 where "'" belongs
              ("Ross", "anger", 125, 3, "00:05:00,000", "corrupt")],  # known bad: corrupt in the release
    "dev": [("Monica", "anger", 0, 0, "00:01:00,000", "good"),
            ("Chandler", "fear", 110, 7, "00:01:05,000", None)],  # known bad: missing from the release
    "test": [("Phoebe", "sadness", 0, 0, "0:14:38,127", "good"),  # a one-digit hour, as some rows have
             ("Joey", "disgust", 0, 1, "00:14:40,000", "good"),
             ("Ross", "neutral", 220, 0, "00:20:00,000", "good"),  # known bad: mis-cut (minutes long)
             ("Rachel", "joy", 38, 4, "00:21:00,000", "good")],  # known bad: mis-cut
}
SKIPS = {"known_bad": 4, "unlabelled_file": 2}


def places(layout: str, prefix: str) -> tuple[str, str]:
    """(folder of the CSV, folder holding the clip folder), relative to the release root."""
    if layout == "a":
        return "", ""
    if layout == "b":
        return ("train", "train") if prefix == "train" else ("", "")
    return prefix, prefix  # c


def write(root: Path, layout: str, release: str = "", skip: tuple[str, ...] = ()):
    """A MELD tree in ``layout`` (under ``root / release``), without the splits named in ``skip``."""
    base = root / release
    good = root / "_good.mp4"
    trees.mp4(good, rate=48000)
    expected = {}
    for prefix, rows in ROWS.items():
        if prefix in skip:
            continue
        table_dir, clip_dir = places(layout, prefix)
        videos = base / clip_dir / FOLDERS[prefix]
        videos.mkdir(parents=True, exist_ok=True)
        (base / table_dir).mkdir(parents=True, exist_ok=True)
        with open(base / table_dir / f"{prefix}_sent_emo.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            for i, (speaker, emotion, d, u, start, clip) in enumerate(rows):
                w.writerow([i + 1, "You\x92re kidding", speaker, emotion, "neutral", d, u, 3, 7, start, start])
                target = videos / f"dia{d}_utt{u}.mp4"
                if clip == "6ch":
                    trees.mp4(target, rate=48000, channels=6)
                elif clip == "good":
                    target.write_bytes(good.read_bytes())
                elif clip == "corrupt":
                    target.write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
                key = f"{prefix}/dia{d}_utt{u}"
                if key not in Meld.KNOWN_BAD:
                    expected[key] = (SPLIT[prefix], emotion, speaker.replace("\x92", "'"))
        if prefix == "test":  # clips the CSVs do not list
            (videos / "final_videos_test0.mp4").write_bytes(good.read_bytes())
        if prefix == "train":
            (videos / "dia999_utt0.mp4").write_bytes(good.read_bytes())
    good.unlink()
    return expected, dict(SKIPS)


class _MeldLayout(test_builders._CorpusChecks):
    DATASET_CLASS = Meld
    SPLITS = {"train": 3, "validation": 1, "test": 2}
    SPEAKER_DISJOINT = False

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        skipped = builder.info.metadata["skipped"]
        assert {f["file"]: f["reason"] for f in skipped["files"] if f["reason"] == "known_bad"} == {
            k: "known_bad" for k in Meld.KNOWN_BAD}
        unlabelled = {(f["split"], f["file"]) for f in skipped["files"] if f["reason"] == "unlabelled_file"}
        assert {(s, Path(f).name) for s, f in unlabelled} == {("train", "dia999_utt0.mp4"),
                                                              ("test", "final_videos_test0.mp4")}
        assert builder.info.metadata["fixed"]["downmixed"] == 6  # every clip: stereo or 5.1
        assert builder.info.metadata["fixed"]["resampled"] == 6  # 48 kHz


class MeldFlatTest(_MeldLayout, tfds.testing.DatasetBuilderTestCase):
    WRITE = staticmethod(functools.partial(write, layout="a"))


class MeldRawAsShippedTest(_MeldLayout, tfds.testing.DatasetBuilderTestCase):
    WRITE = staticmethod(functools.partial(write, layout="b", release="MELD.Raw"))  # manual_dir: its parent


class MeldFolderPerSplitTest(_MeldLayout, tfds.testing.DatasetBuilderTestCase):
    WRITE = staticmethod(functools.partial(write, layout="c"))


def _tables_only(root: Path, layout: str, release: str = "") -> None:
    for prefix in ROWS:
        table_dir, clip_dir = places(layout, prefix)
        (root / release / clip_dir / FOLDERS[prefix]).mkdir(parents=True, exist_ok=True)
        (root / release / clip_dir / FOLDERS[prefix] / "dia0_utt0.mp4").write_bytes(b"")
        (root / release / table_dir / f"{prefix}_sent_emo.csv").write_text(",".join(HEADER) + "\n")


@pytest.mark.parametrize("layout", ["a", "b", "c"])
@pytest.mark.parametrize("release", ["", "MELD.Raw", "MELD"])
def test_release_root_found_in_every_layout(tmp_path, layout, release):
    _tables_only(tmp_path, layout, release)
    root = Meld(data_dir=str(tmp_path / "out"))._root(epath.Path(tmp_path))
    assert root == epath.Path(tmp_path / release)
    splits, problems = Meld(data_dir=str(tmp_path / "out"))._index(root)
    assert splits == {"train": [], "validation": [], "test": []}
    assert [p.reason for p in problems] == ["unlabelled_file"] * 3


def _prepare(tmp_path: Path) -> None:
    builder = Meld(data_dir=str(tmp_path / "out"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "m")))


@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_missing_split_is_an_error_naming_every_path_searched(tmp_path, layout):
    write(tmp_path / "m", layout, skip=("test",))
    with pytest.raises(ManualDirError) as e:
        _prepare(tmp_path)
    message = str(e.value)
    assert "'test'" in message and "test_sent_emo.csv" in message
    assert "'train'" not in message and "'validation'" not in message
    root = tmp_path / "m"
    for searched in (root / "test_sent_emo.csv", root / "test" / "test_sent_emo.csv",
                     root / "output_repeated_splits_test", root / "test" / "output_repeated_splits_test"):
        assert str(searched) in message, searched


def test_split_without_its_clips_is_an_error(tmp_path):
    write(tmp_path / "m", "c")
    for clip in (tmp_path / "m" / "dev" / "dev_splits_complete").iterdir():
        clip.unlink()
    with pytest.raises(ManualDirError, match=r"'validation': no dev_splits_complete/ of mp4 clips for .*dev_sent_emo"):
        _prepare(tmp_path)
