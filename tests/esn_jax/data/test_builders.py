"""Each corpus builder on a dummy tree laid out like its release (tfds' DatasetBuilderTestCase), then its
labels, speakers, splits and build summary checked against what the tree was written to contain."""

from __future__ import annotations

import collections
import itertools
import tempfile
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from esn_jax.data import EMOTIONS, FOUR, MAPPINGS, CremaDLocal, Esd, Iemocap, ManualDirError, Meld, MspPodcast, Ravdess
from esn_jax.data.base import speaker_splits
from tests.esn_jax.data import dummy_trees as trees


class _CorpusChecks:
    """Mixed into tfds' DatasetBuilderTestCase (a mixin, so that pytest does not collect it alone): writes
    the tree in setUpClass; checks every example after tfds' own build-and-read test."""

    WRITE = None
    SKIP_CHECKSUMS = True

    def test_session(self, *args, **kwargs):
        return super().test_session(*args, **kwargs)

    test_session.__test__ = False  # TensorFlow's session helper (tfds uses it), not a test for pytest to collect

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.EXAMPLE_DIR = cls._tmp.name
        cls.expected, cls.expected_skips = cls.WRITE(Path(cls._tmp.name))
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls._tmp.cleanup()

    def _assertAsDataset(self, builder):  # noqa: N802 (tfds' name)
        # The builders write array_record (what tfds.data_source reads), which has no tf.data reader in this
        # tfds; the same checks as tfds' (examples per split, no example in two splits) through as_data_source.
        ids = {}
        for split, n in self.SPLITS.items():
            source = builder.as_data_source(split=split)
            self.assertLen(source, n)
            ids[split] = {ex["id"] for ex in source}
        for a, b in itertools.combinations(ids, 2):
            self.assertFalse(ids[a] & ids[b], (a, b))

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        corpus = builder.CORPUS
        got = {}
        for split in builder.info.splits:
            for ex in builder.as_data_source(split=split):
                got[ex["id"].decode()] = (split, ex["label"].decode(), ex["speaker"].decode(), ex["emotion"],
                                          ex["emotion4"], ex["audio"])
        self.assertEqual(sorted(got), sorted(self.expected))
        for key, (split, label, speaker) in self.expected.items():
            g_split, g_label, g_speaker, emotion, emotion4, wave = got[key]
            self.assertEqual((g_label, g_speaker), (label, speaker), key)
            if split is not None:
                self.assertEqual(g_split, split, key)
            name = MAPPINGS[corpus][label]
            self.assertEqual(EMOTIONS[emotion], name, key)
            self.assertEqual(emotion4, FOUR.index(name) if name in FOUR else -1, key)
            # every good file is a SECONDS-long tone: fixed to 16 kHz mono it keeps its duration
            self.assertAlmostEqual(len(wave) / 16000, trees.SECONDS, delta=0.05 if corpus != "meld" else 0.1)
        speakers_by_split = collections.defaultdict(set)
        for split, _, speaker, *_ in got.values():
            speakers_by_split[split].add(speaker)
        if self.SPEAKER_DISJOINT:
            for a in speakers_by_split:
                for b in speakers_by_split:
                    self.assertTrue(a == b or not speakers_by_split[a] & speakers_by_split[b], (a, b))
        skipped = builder.info.metadata["skipped"]
        self.assertEqual(skipped["counts"], self.expected_skips)
        self.assertEqual(len(skipped["files"]), sum(self.expected_skips.values()))
        reloaded = type(builder)(data_dir=builder.data_dir_root, config=builder.builder_config.name
                                 if builder.builder_config else None)
        self.assertEqual(reloaded.info.metadata["skipped"]["counts"], self.expected_skips)

    SPEAKER_DISJOINT = True


class CremaDTest(_CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = CremaDLocal
    WRITE = staticmethod(trees.crema_d)
    SPLITS = {"train": 2, "validation": 2, "test": 2}  # 3 actors with 2 good files each: one actor per split


class RavdessTest(_CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Ravdess
    WRITE = staticmethod(trees.ravdess)
    BUILDER_CONFIG_NAMES_TO_TEST = ["speech"]
    SPLITS = {"train": 2, "validation": 2, "test": 2}


class EsdTest(_CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Esd
    WRITE = staticmethod(trees.esd)
    SPLITS = {"train": 2, "validation": 2, "test": 2}


class IemocapTest(_CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Iemocap
    WRITE = staticmethod(trees.iemocap)
    SPLITS = {"session1": 2, "session2": 2, "session3": 1, "session4": 1, "session5": 1}


class MeldTest(_CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Meld
    WRITE = staticmethod(trees.meld)
    SPLITS = {"train": 2, "validation": 1, "test": 1}
    SPEAKER_DISJOINT = False  # MELD's official splits share the show's characters


class MspPodcastTest(_CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = MspPodcast
    WRITE = staticmethod(trees.msp_podcast)
    SPLITS = {"train": 2, "validation": 1, "test1": 1, "test2": 1}


@pytest.mark.parametrize("cls", [CremaDLocal, Ravdess, Esd, Iemocap, Meld, MspPodcast])
def test_wrong_manual_dir_names_what_was_expected(tmp_path, cls):
    (tmp_path / "something_else.txt").write_text("x")
    builder = cls(data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDirError, match="expected .* in .*something_else.txt"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


def test_release_folder_inside_manual_dir_is_found(tmp_path):
    trees.crema_d(tmp_path / "CREMA-D")
    builder = CremaDLocal(data_dir=str(tmp_path / "out"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
    assert sum(s.num_examples for s in builder.info.splits.values()) == 6


def test_speaker_splits_are_disjoint_complete_and_seeded():
    speakers = [f"{i:04d}" for i in range(1001, 1092)]  # CREMA-D's 91 actors
    a = speaker_splits(speakers * 2, seed=0)
    assert sorted(a) == speakers
    counts = collections.Counter(a.values())
    assert counts == {"train": 91 - 9 - 9, "validation": 9, "test": 9}
    assert a == speaker_splits(list(reversed(speakers)), seed=0)  # independent of file order
    assert a != speaker_splits(speakers, seed=1)
    assert set(speaker_splits(["a", "b", "c"], seed=3).values()) == {"train", "validation", "test"}
    with pytest.raises(ValueError, match=">= 3 speakers"):
        speaker_splits(["a", "b"], seed=0)
