"""IEMOCAP as its copies really come: macOS ``._*`` AppleDouble files beside every wav and txt (neither
parsed nor counted), EmoEvaluation sub-folders of per-annotator files (not read), the speaker's gender from
the turn, not the dialog; all five sessions required."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from esn_jax.data import Iemocap, ManualDirError
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(32)


def _line(utterance: str, label: str) -> str:
    return f"[1.0000 - 2.0000]\t{utterance}\t{label}\t[2.5000, 2.5000, 2.5000]\n"


def write_iemocap(root: Path):
    """Sessions 1-5 in IEMOCAP_full_release/; session 1 holds every case, 2-5 one utterance each."""
    root = root / "IEMOCAP_full_release"
    expected = {}
    for n in range(1, 6):
        dialog = f"Ses0{n}{'F' if n % 2 else 'M'}_impro01"
        emo = root / f"Session{n}" / "dialog" / "EmoEvaluation"
        wavs = root / f"Session{n}" / "sentences" / "wav" / dialog
        emo.mkdir(parents=True)
        turns = {"F000": "neu"} if n > 1 else {"F000": "neu", "M000": "ang"}  # Ses01F_..._M000 is the actor
        (emo / f"{dialog}.txt").write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
                                           + "\n".join(_line(f"{dialog}_{t}", label) for t, label in turns.items()))
        for turn, label in turns.items():
            trees.wav(wavs / f"{dialog}_{turn}.wav")
            expected[f"{dialog}_{turn}"] = (f"session{n}", label, f"Ses0{n}{turn[0]}")
        # macOS copies: an AppleDouble file beside every wav and txt, and beside the dialog folder
        for path in [*wavs.glob("*.wav"), emo / f"{dialog}.txt", wavs]:
            (path.parent / f"._{path.name}").write_bytes(APPLE_DOUBLE)
    # Session 1: a wav without a label line. The files that must not be read would label it, and relabel F000:
    # the AppleDouble txt (holding such a line after its binary header) and the per-annotator sub-folders.
    emo = root / "Session1" / "dialog" / "EmoEvaluation"
    trees.wav(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F001.wav")
    (emo / "._Ses01F_impro01.txt").write_bytes(APPLE_DOUBLE + b"\n" + _line("Ses01F_impro01_F001", "sad").encode())
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        (emo / sub).mkdir()
        (emo / sub / f"Ses01F_impro01_e1_{sub[:3].lower()}.txt").write_text(
            _line("Ses01F_impro01_F000", "hap") + _line("Ses01F_impro01_F001", "sad"))
    return expected, {"no_label": 1}


class IemocapReleaseTest(test_builders._CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Iemocap
    WRITE = staticmethod(write_iemocap)
    SPLITS = {"session1": 2, "session2": 1, "session3": 1, "session4": 1, "session5": 1}

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        files = [f["file"] for f in builder.info.metadata["skipped"]["files"]]
        self.assertEqual(files, ["Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav"])


def _prepare(tmp_path):
    builder = Iemocap(data_dir=str(tmp_path / "out"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


def test_a_missing_session_is_an_error_naming_found_and_missing(tmp_path):
    write_iemocap(tmp_path)
    for n in (2, 5):
        shutil.rmtree(tmp_path / "IEMOCAP_full_release" / f"Session{n}")
    with pytest.raises(ManualDirError, match=r"all five sessions .*found \['Session1', 'Session3', 'Session4'\], "
                                             r"missing \['Session2', 'Session5'\]"):
        _prepare(tmp_path)


@pytest.mark.parametrize("part", ["dialog/EmoEvaluation", "sentences/wav"])
def test_a_session_without_labels_or_audio_is_an_error(tmp_path, part):
    write_iemocap(tmp_path)
    shutil.rmtree(tmp_path / "IEMOCAP_full_release" / "Session3" / part)
    with pytest.raises(ManualDirError, match=r"Session3 is incomplete: expected .*sentences/wav/<dialog>/\*\.wav"):
        _prepare(tmp_path)
