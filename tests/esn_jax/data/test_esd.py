"""ESD as its copies really come: both folder layouts, transcripts in mixed encodings (UTF-16LE with and
without BOM, GB2312 with Chinese emotions, UTF-8, one undecodable), lines with spaces for tabs, and a
folder label the transcript contradicts (counted in ``metadata["cross_check"]``, the folder's label kept)."""

from __future__ import annotations

import codecs
import collections
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from esn_jax.data import Esd, ManualDirError
from esn_jax.data.base import speaker_splits
from esn_jax.data.esd import decode_text, emotion_name, parse_transcript
from esn_jax.data.prepare import summary
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders

SPEAKERS = ("0001", "0002", "0011", "0012", "0013")
SPLIT_OF = speaker_splits(SPEAKERS, seed=0)
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


# The usable wavs: (speaker, path below the speaker folder, folder label).
GOOD = [
    # Mandarin, the original layout, GB2312 transcript with Chinese emotions; a macOS ._ copy beside a wav.
    ("0001", "Neutral/test/0001_000001.wav", "Neutral"), ("0001", "Angry/train/0001_000351.wav", "Angry"),
    ("0001", "Happy/evaluation/0001_000701.wav", "Happy"),
    # Mandarin, flat, UTF-16LE without BOM; one line with spaces for tabs.
    ("0002", "Sad/0002_001051.wav", "Sad"), ("0002", "Surprise/0002_001401.wav", "Surprise"),
    # English, flat, UTF-16LE with BOM: an agreement (a line with spaces), a disagreement (the transcript says
    # Happy: the folder wins), a wav with no line.
    ("0011", "Neutral/0011_000001.wav", "Neutral"), ("0011", "Angry/0011_000351.wav", "Angry"),
    ("0011", "Happy/0011_000701.wav", "Happy"),
    # English, the original layout, UTF-8.
    ("0012", "Sad/train/0012_001051.wav", "Sad"),
    # English, flat; a transcript no encoding decodes.
    ("0013", "Neutral/0013_000001.wav", "Neutral"),
]


def _transcript(root: Path, speaker: str, lines: list[str], encoding: str, bom: bytes = b"") -> None:
    (root / speaker).mkdir(parents=True, exist_ok=True)
    (root / speaker / f"{speaker}.txt").write_bytes(bom + "".join(f"{line}\r\n" for line in lines).encode(encoding))


def write_esd(root: Path):
    """The release's top folder, 5 speakers; returns ({id: (split, label, speaker)}, {reason: n})."""
    root = root / "Emotion Speech Dataset"
    for speaker, rel, _ in GOOD:
        trees.wav(root / speaker / rel)
    (root / "0001" / "Neutral" / "test" / "._0001_000001.wav").write_bytes(APPLE_DOUBLE)
    _transcript(root, "0001", ["0001_000001\t打远一看，它们的确很是美丽，\t中立", "0001_000351\t他们走了。\t生气",
                               "0001_000701\t今天天气很好。\t快乐"], "gb2312")
    _transcript(root, "0002", ["0002_001051 他们 走了。 伤心", "0002_001401\t真的吗？\t惊喜"], "utf-16-le")
    trees.wav(root / "0011" / "Bored" / "0011_000009.wav")  # no ESD emotion (and no transcript line)
    _transcript(root, "0011", ["0011_000001 The nine the eggs. Neutral", "0011_000351\tDon't ask me.\tHappy"],
                "utf-16-le", codecs.BOM_UTF16_LE)
    trees.wav(root / "0012" / "Surprise" / "test" / "0012_001401.wav", kind="corrupt")
    _transcript(root, "0012", ["0012_001051\tI am sad.\tSad", "0012_001401\tReally?\tSurprise"], "utf-8")
    (root / "0013" / "0013.txt").write_bytes(b"0013_000001\t\x80\xff broken\tNeutral\r\n")
    expected = {f"{speaker}/{rel}": (SPLIT_OF[speaker], label, speaker) for speaker, rel, label in GOOD}
    return expected, {"unknown_label": 1, "unreadable": 1}


class EsdReleaseLayoutsTest(test_builders._CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Esd
    WRITE = staticmethod(write_esd)
    SPLITS = dict(collections.Counter(SPLIT_OF[speaker] for speaker, _, _ in GOOD))

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        reloaded = Esd(data_dir=builder.data_dir_root, config=builder.builder_config.name)
        for info in (builder.info, reloaded.info):
            check = info.metadata["cross_check"]
            self.assertEqual((check["agree"], check["disagree"], check["no_txt_line"]), (8, 1, 3))
            self.assertEqual(check["examples"], [{"id": "0011/Angry/0011_000351.wav", "folder": "Angry",
                                                  "txt": "Happy", "txt_file": "0011/0011.txt"}])
            self.assertEqual([u["file"] for u in check["unreadable_txt"]], ["0013/0013.txt"])
        self.assertIn("labels cross-checked: 8 agree, 1 disagree, 3 without a transcript line", summary(builder))



@pytest.mark.parametrize(("data", "encoding"), [
    (codecs.BOM_UTF16_LE + "0001_000001\t美丽\t中立".encode("utf-16-le"), "utf-16-le + BOM"),
    ("0001_000001\t美丽\t中立".encode("utf-16-le"), "utf-16-le"),
    ("0001_000001\t美丽\t中立".encode("utf-16-be"), "utf-16-be"),
    (codecs.BOM_UTF8 + "0001_000001\t美丽\t中立".encode(), "utf-8 + BOM"),
    ("0001_000001\t美丽\t中立".encode(), "utf-8"),
    ("0001_000001\t美丽\t中立".encode("gb2312"), "gb2312"),
    ("0001_000001\t美丽\t中立".encode("gbk"), "gbk"),
])
def test_transcripts_decode_in_every_encoding_they_come_in(data, encoding):
    assert parse_transcript(decode_text(data)) == {"0001_000001": "中立"}, encoding


def test_transcript_lines_split_on_tabs_else_on_spaces():
    text = "0011_000001\tThe nine the eggs.\tNeutral\n\n0011_000002 I am  here. Angry \n0011_000003\tHappy\t\n x\n"
    assert parse_transcript(text) == {"0011_000001": "Neutral", "0011_000002": "Angry", "0011_000003": "Happy"}
    with pytest.raises(UnicodeDecodeError):
        decode_text(b"0013_000001\t\x80\xff\tNeutral")
    assert [emotion_name(e) for e in ("中立", "生气", "快乐", "伤心", "惊喜", "sad", "Bored")] == [
        "Neutral", "Angry", "Happy", "Sad", "Surprise", "Sad", None]


def test_speaker_folders_without_audio_are_an_error(tmp_path):
    (tmp_path / "0011" / "Angry").mkdir(parents=True)
    builder = Esd(data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDirError, match=r"no ESD audio .*<speaker>/<Emotion>/\*\.wav"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
