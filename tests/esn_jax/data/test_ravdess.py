"""RAVDESS as its zips really come: wavs with an ``FLLR`` chunk before ``data`` (read right, not as a
44-byte header), speech and song unpacked into the same Actor folders with no songs for Actor_18 (the
``speech_and_song`` config builds), neutral at normal intensity only, macOS ``._*`` copies ignored."""

from __future__ import annotations

import collections
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from esn_jax.data import ManualDirError, Ravdess, audio
from esn_jax.data.base import speaker_splits
from tests.esn_jax.data import dummy_trees as trees
from tests.esn_jax.data import test_builders

FLLR = bytes(range(256)) * 15 + bytes(range(212))  # 4052 bytes, even: no pad byte


def fllr_wav(path: Path, samples: np.ndarray, rate: int = 48000) -> int:
    """A 16-bit mono RIFF/WAVE written by hand as RAVDESS's are: fmt, an FLLR filler chunk, data. Returns
    the offset of the first sample."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    data = samples.astype("<i2").tobytes()
    chunks = b"".join(tag + struct.pack("<I", len(body)) + body for tag, body in
                      ((b"fmt ", fmt), (b"FLLR", FLLR), (b"data", data)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return 12 + 8 + len(fmt) + 8 + len(FLLR) + 8


def _pcm(rate: int) -> np.ndarray:
    """The dummy trees' tone as int16 samples."""
    return np.round(trees.tone(rate)[:, 0] * 32767).astype(np.int16)


def test_a_wav_with_an_fllr_chunk_decodes_to_its_samples(tmp_path):
    samples = _pcm(16000)
    offset = fllr_wav(tmp_path / "a.wav", samples, rate=16000)
    wave, fixes = audio.decode(tmp_path / "a.wav")
    assert fixes == []
    np.testing.assert_array_equal(np.round(wave * 32768).astype(np.int16), samples)
    # what a reader assuming a 44-byte header would take for the audio: the FLLR bytes
    raw = (tmp_path / "a.wav").read_bytes()
    assert offset > 44 and not np.array_equal(np.frombuffer(raw[44:44 + 2 * samples.size], "<i2"), samples)


ACTORS = ("01", "02", "03", "18")
SPLIT_OF = speaker_splits(ACTORS, seed=0)
# (actor, file name stem); channel 02 = song. Actor_18 has speech only, as in the release; neutral (01) has
# intensity 01 only.
GOOD = [("01", "03-01-01-01-01-01-01"), ("01", "03-02-03-02-01-01-01"), ("02", "03-01-05-02-02-01-02"),
        ("02", "03-02-04-01-01-02-02"), ("03", "03-01-08-02-01-01-03"), ("03", "03-02-06-01-02-01-03"),
        ("18", "03-01-07-02-01-01-18"), ("18", "03-01-02-01-02-02-18")]


def write_ravdess(root: Path):
    for actor, name in GOOD:
        path = root / f"Actor_{actor}" / f"{name}.wav"
        if name.endswith("-18"):  # written by hand, with the release's FLLR chunk, at 48 kHz
            fllr_wav(path, _pcm(48000))
        else:
            trees.wav(path, rate=48000)
    (root / "Actor_01" / "._03-01-01-01-01-01-01.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    trees.wav(root / "Actor_02" / "01-02-04-01-01-01-02.wav")  # a video file's name: not in the config
    expected = {name: (SPLIT_OF[actor], name.split("-")[2], actor) for actor, name in GOOD}
    return expected, {"not_in_config": 1}


class RavdessSpeechAndSongTest(test_builders._CorpusChecks, tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = Ravdess
    WRITE = staticmethod(write_ravdess)
    BUILDER_CONFIG_NAMES_TO_TEST = ["speech_and_song"]
    SPLITS = dict(collections.Counter(SPLIT_OF[actor] for actor, _ in GOOD))


@pytest.mark.parametrize(("config", "kept", "zip_name"), [("speech_and_song", "01", "Audio_Song_Actors_01-24.zip"),
                                                          ("speech", "02", "Audio_Speech_Actors_01-24.zip")])
def test_a_channel_the_config_reads_but_nowhere_found_is_an_error(tmp_path, config, kept, zip_name):
    for actor in ("01", "02", "03"):
        trees.wav(tmp_path / f"Actor_{actor}" / f"03-{kept}-03-01-01-01-{actor}.wav")
    builder = Ravdess(config=config, data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDirError, match=f"no 03-<channel>-.* unpack {zip_name}"):
        builder._index(builder._root(tmp_path))
