"""CREMA-D as copies of its Git LFS repository really come: a zip download holds LFS pointer files (the
build stops at once), a partial pull holds some (skipped as ``lfs_pointer``), the release's silent clip
is skipped as ``known_bad``, macOS ``._*`` copies are ignored."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from esn_jax.data import CremaDLocal, ManualDirError
from esn_jax.data.base import speaker_splits
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders

POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 120764\n"
GOOD = ["1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_DFA_SAD_XX", "1003_TIE_NEU_XX", "1076_DFA_FEA_XX"]
SPLIT_OF = speaker_splits([name[:4] for name in GOOD], seed=0)


def write_crema_d(root: Path):
    audio = root / "AudioWAV"
    for name in GOOD:
        trees.wav(audio / f"{name}.wav", rate=16000)
    trees.wav(audio / "1076_MTI_SAD_XX.wav", kind="silent")  # as in the release
    (audio / "1002_IEO_DIS_MD.wav").write_bytes(POINTER)  # left a pointer by an interrupted `git lfs pull`
    (audio / "._1001_DFA_ANG_XX.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    expected = {name: (SPLIT_OF[name[:4]], name.split("_")[2], name[:4]) for name in GOOD}
    return expected, {"known_bad": 1, "lfs_pointer": 1}


class CremaDReleaseTest(test_builders._CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = CremaDLocal
    WRITE = staticmethod(write_crema_d)
    SPLITS = dict(collections.Counter(SPLIT_OF[name[:4]] for name in GOOD))

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        files = {f["file"]: f for f in builder.info.metadata["skipped"]["files"]}
        self.assertEqual(files["1076_MTI_SAD_XX"]["detail"], CremaDLocal.KNOWN_BAD["1076_MTI_SAD_XX"])
        self.assertIn("git lfs pull", files["1002_IEO_DIS_MD"]["detail"])


def test_a_zip_download_of_lfs_pointers_fails_before_decoding(tmp_path):
    for actor in range(1001, 1011):
        (tmp_path / "CREMA-D" / "AudioWAV").mkdir(parents=True, exist_ok=True)
        (tmp_path / "CREMA-D" / "AudioWAV" / f"{actor}_DFA_ANG_XX.wav").write_bytes(POINTER)
    builder = CremaDLocal(data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDirError, match=r"every one of the 10 files .* Git LFS pointer.*git lfs pull"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


def test_pointers_first_and_audio_after_is_no_zip_download(tmp_path):
    audio = tmp_path / "AudioWAV"
    audio.mkdir()
    for actor in range(1001, 1008):  # more pointers than the sample read first
        (audio / f"{actor}_DFA_ANG_XX.wav").write_bytes(POINTER)
    trees.wav(audio / "1091_DFA_ANG_XX.wav")
    splits, problems = CremaDLocal(data_dir=str(tmp_path / "out"))._index(tmp_path)
    assert sum(len(items) for items in splits.values()) == 8  # the pointers are skipped when decoded
    assert problems == []
