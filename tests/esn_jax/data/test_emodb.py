"""EmoDB on a dummy tree laid out like the release: every emotion letter (boredom included), a second
version of an utterance, a bad name, an unknown letter, a corrupt wav, a hidden AppleDouble copy, the
Latin-1 ``erkennung.txt`` and an annotation folder, none of which may disturb the build."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from etils import epath

from esn_jax.data import BUILDERS, EMOTIONS, FOUR, MAPPINGS, Emodb, ManualDirError, emotions
from esn_jax.data.base import speaker_splits
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders  # the module, not its classes: pytest would collect them again here

# speaker -> good files; three speakers with three each, so 1/1/1 speakers gives 3/3/3 examples
GOOD = {"03": ("03a01Wa", "03a01La", "03a01Lb"), "08": ("08a02Ea", "08b01Aa", "08b10Fa"),
        "16": ("16a04Ta", "16b03Na", "16a05Wb")}
SKIPS = {"bad_name": 2, "unknown_label": 1, "unreadable": 1}


def write_emodb(root: Path):
    for name in (name for names in GOOD.values() for name in names):
        trees.wav(root / "wav" / f"{name}.wav")
    trees.wav(root / "wav" / "03a1Fa.wav")  # text field one digit short
    trees.wav(root / "wav" / "08a01F.wav")  # no version letter
    trees.wav(root / "wav" / "08a02Xa.wav")  # a capital that is no EmoDB emotion
    trees.wav(root / "wav" / "16a07Ab.wav", kind="corrupt")
    trees.wav(root / "wav" / "._03a01Wa.wav", kind="corrupt")  # macOS AppleDouble copy: ignored
    (root / "erkennung.txt").write_bytes("Satz\tErkennung\tNatürlichkeit\n03a01Wa\t92,3\t81,5\n".encode("latin-1"))
    (root / "lablaut").mkdir()
    (root / "lablaut" / "03a01Wa.lablaut").write_text("0.000 #\n0.120 d\n")
    expected = {name: (None, name[5], speaker) for speaker, names in GOOD.items() for name in names}
    return expected, dict(SKIPS)


class EmodbTest(test_builders._CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Emodb
    WRITE = staticmethod(write_emodb)
    SPLITS = {"train": 3, "validation": 3, "test": 3}

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        files = {s["file"]: s["reason"] for s in builder.info.metadata["skipped"]["files"]}
        self.assertEqual(files, {"wav/03a1Fa.wav": "bad_name", "wav/08a01F.wav": "bad_name",
                                 "08a02Xa": "unknown_label", "16a07Ab": "unreadable"})
        speakers = {}
        for split in builder.info.splits:
            for ex in builder.as_data_source(split=split):
                speakers.setdefault(split, set()).add(ex["speaker"].decode())
        self.assertEqual(sorted(map(sorted, speakers.values())), [["03"], ["08"], ["16"]])  # one speaker a split


def test_mapping_is_the_seven_letters_with_boredom_its_own_class():
    assert EMOTIONS[-1] == "boredom" and EMOTIONS[:10] == ("neutral", "happy", "sad", "angry", "surprise", "fear",
                                                           "disgust", "contempt", "calm", "frustrated")
    assert emotions.unify("emodb", "L") == (len(EMOTIONS) - 1, -1)
    expected = {"W": "angry", "F": "happy", "T": "sad", "N": "neutral", "A": "fear", "E": "disgust"}
    for letter, name in expected.items():
        assert emotions.unify("emodb", letter) == (EMOTIONS.index(name), FOUR.index(name) if name in FOUR else -1)
    assert set(MAPPINGS["emodb"]) == set("WFTNAEL")
    with pytest.raises(emotions.LabelError) as e:
        emotions.unify("emodb", "X")
    assert e.value.reason == "unknown_label"


def test_registered_under_its_tfds_name():
    assert Emodb.name == "emodb" and BUILDERS["emodb"] is Emodb


def test_ten_speakers_split_eight_one_one():
    speakers = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    counts = sorted(list(speaker_splits(speakers, seed=0).values()).count(s) for s in ("train", "validation", "test"))
    assert counts == [1, 1, 8]


def test_wrong_manual_dir_names_what_was_expected(tmp_path):
    (tmp_path / "something_else.txt").write_text("x")
    (tmp_path / "lablaut").mkdir()  # annotations without wav/ are not the release
    builder = Emodb(data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDirError, match=r"expected wav/.*03a01Fa\.wav.* in .*something_else.txt"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


@pytest.mark.parametrize("folder", ["emodb", "EmoDB", "download"])
def test_release_folder_inside_manual_dir_is_found(tmp_path, folder):
    write_emodb(tmp_path / folder)
    builder = Emodb(data_dir=str(tmp_path / "out"))
    assert builder._root(epath.Path(tmp_path)) == epath.Path(tmp_path / folder)
