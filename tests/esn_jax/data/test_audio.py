"""Decoding and fixing audio; the emotion mapping."""

import numpy as np
import pytest

from esn_jax.data import EMOTIONS, FOUR, MAPPINGS, audio, emotions
from tests.esn_jax.data import dummy_trees as trees


def _peak_hz(wave, rate=16000):
    spectrum = np.abs(np.fft.rfft(wave))
    return np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (48000, 1), (22050, 2)])
def test_decode_fixes_rate_and_channels(tmp_path, rate, channels):
    trees.wav(tmp_path / "a.wav", rate=rate, channels=channels)
    wave, fixes = audio.decode(tmp_path / "a.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - trees.SECONDS * 16000) <= 1
    assert abs(_peak_hz(wave) - 440) <= 4  # 4 Hz = the FFT bin width of a 0.25 s clip
    # the downmix is the channels' mean: amplitudes 0.3, 0.4 -> 0.35 (16-bit quantised)
    assert np.abs(wave).max() == pytest.approx(0.3 + 0.05 * (channels - 1), abs=0.01)
    assert fixes == (["downmixed"] if channels > 1 else []) + (["resampled"] if rate != 16000 else [])


def test_decode_reads_the_audio_track_of_an_mp4(tmp_path):
    trees.mp4(tmp_path / "a.mp4")
    wave, fixes = audio.decode(tmp_path / "a.mp4")
    assert fixes == ["downmixed", "resampled"]
    assert abs(_peak_hz(wave) - 440) <= 4
    assert trees.SECONDS * 16000 <= wave.size <= (trees.SECONDS + 0.1) * 16000  # AAC adds priming samples


@pytest.mark.parametrize(("kind", "reason"), [("nan", "nan"), ("empty", "empty"), ("corrupt", "unreadable"),
                                              ("silent", "silent")])
def test_decode_refuses_what_cannot_be_fixed(tmp_path, kind, reason):
    trees.wav(tmp_path / "a.wav", kind=kind)
    with pytest.raises(audio.BadAudio) as e:
        audio.decode(tmp_path / "a.wav")
    assert e.value.reason == reason


def test_decode_names_a_git_lfs_pointer(tmp_path):
    path = tmp_path / "1001_DFA_ANG_XX.wav"  # what a zip download of CREMA-D's repository holds
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 62342\n")
    with pytest.raises(audio.BadAudio, match="git lfs pull") as e:
        audio.decode(path)
    assert e.value.reason == "lfs_pointer"


def test_decode_names_a_missing_file_unreadable(tmp_path):
    with pytest.raises(audio.BadAudio) as e:
        audio.decode(tmp_path / "absent.wav")
    assert e.value.reason == "unreadable"


def test_int16_round_trip_clips_overshoot():
    wave = np.array([0.0, 0.5, -0.5, 1.2, -1.2], np.float32)
    np.testing.assert_allclose(audio.to_float(audio.to_int16(wave)), np.clip(wave, -1, 1), atol=1 / 32767)


def test_mapping_targets_the_shared_vocabulary():
    assert FOUR == ("neutral", "happy", "sad", "angry") and EMOTIONS[:4] == FOUR
    for corpus, mapping in MAPPINGS.items():
        assert set(mapping.values()) <= set(EMOTIONS), corpus
        assert set(FOUR) <= set(mapping.values()), corpus  # every corpus has the 4-class view
    assert emotions.unify("iemocap", "exc") == emotions.unify("iemocap", "hap") == (1, 1)
    assert emotions.unify("meld", "joy") == emotions.unify("esd", "Happy") == (1, 1)
    assert emotions.unify("ravdess", "02") == (EMOTIONS.index("calm"), -1)
    with pytest.raises(emotions.LabelError) as e:
        emotions.unify("iemocap", "xxx")
    assert e.value.reason == "excluded_label"
    with pytest.raises(emotions.LabelError) as e:
        emotions.unify("meld", "sarcasm")
    assert e.value.reason == "unknown_label"
