"""Features: each model's windowing around transformers' WhisperFeatureExtractor, and refused audio."""

import numpy as np
import pytest

from ports import features
from ports.audio import output_lengths


def tone(seconds, seed=0):
    t = np.arange(int(seconds * features.SAMPLE_RATE)) / features.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(seed).normal(size=t.size)).astype(
        np.float32)


def test_omni_whole_clip_with_a_frame_mask_trimmed_to_whole_chunks():
    out = features.qwen2_5_omni([tone(2.5), tone(0.7)], n_mels=80)
    assert out["input_features"].shape == (2, 80, 400)  # 250 frames -> two 200-frame chunks
    assert out["feature_attention_mask"].sum(1).tolist() == [250, 70]


def test_af3_windows_and_token_counts():
    out = features.audio_flamingo3([tone(31), tone(5)], n_mels=80)
    assert out["input_features"].shape == (3, 80, 3000)
    assert out["windows_per_clip"].tolist() == [2, 1]
    assert out["input_features_mask"].sum(1).tolist() == [3000, 100, 500]
    per_window = output_lengths(out["input_features_mask"].sum(1))
    assert out["num_audio_tokens"].tolist() == [per_window[0] + per_window[1], per_window[2]] == [775, 125]


def test_kimi_segments_at_12_5_hz():
    out = features.kimi_audio([tone(30.5)], n_mels=80)
    assert out["whisper_input_features"].shape == (2, 80, 3000)
    assert out["num_audio_tokens"].tolist() == [375 + 7]  # ceil(8000 samples / 1280) = 7


@pytest.mark.parametrize("seconds", [1, 30, 37, 1.28])  # 1.28 s = 16 codes exactly: no zero padding at all
def test_kimi_tokenizer_features_are_glm4_voice_per_clip(seconds):
    """GLM-4-Voice's extract_speech_token, written out: the clip's 30-s segments in one extractor call padded
    to the longest rounded up to 1280 samples; valid frames = the extractor's mask; zeros beyond."""
    clip = tone(seconds, seed=3)
    out = features.kimi_audio([clip], n_mels=80)
    segments = [clip[s:s + 480000] for s in range(0, clip.size, 480000)]
    want = features.extractor(80)(segments, sampling_rate=16000, padding="longest", pad_to_multiple_of=1280,
                                  return_attention_mask=True, return_tensors="np")
    f = want["input_features"].shape[-1]
    assert f % 8 == 0 and out["tokenizer_input_features"].shape == (len(segments), 80, 3000)
    np.testing.assert_array_equal(out["tokenizer_input_features"][..., :f], want["input_features"])
    assert not out["tokenizer_input_features"][..., f:].any() and not out["tokenizer_input_mask"][:, f:].any()
    np.testing.assert_array_equal(out["tokenizer_input_mask"][:, :f], want["attention_mask"])
    # codes per segment = the mask subsampled by 2 (conv) then 4 (pooling) = ceil(samples / 1280)
    per_segment = [int(m[::8].sum()) for m in out["tokenizer_input_mask"]]
    assert per_segment == [-(-s.size // 1280) for s in segments]
    assert out["num_audio_tokens"].tolist() == [sum(per_segment)]


@pytest.mark.parametrize("clip, message", [
    (np.zeros(0, np.float32), "clip 0 is empty"),
    (np.zeros(16000, np.float32), "clip 0 is silent"),
    (np.zeros((2, 100), np.float32), "expected a 1-D 16 kHz waveform"),
])
def test_bad_audio_is_named(clip, message):
    with pytest.raises(ValueError, match=message):
        features.qwen2_5_omni([clip])


def test_audio_longer_than_the_model_accepts_is_refused():
    long = np.full(601 * features.SAMPLE_RATE, 0.1, np.float32)
    with pytest.raises(ValueError, match="clip 0 lasts 601.0 s; Audio Flamingo 3 accepts at most 600 s"):
        features.audio_flamingo3([long])
    with pytest.raises(ValueError, match="Qwen2.5-Omni accepts at most 300 s"):
        features.qwen2_5_omni([long[: 301 * features.SAMPLE_RATE]])


def test_features_do_not_depend_on_torch_being_installed():
    """transformers computes the same log-mel with a torch STFT when torch is importable (the test extra) and a numpy
    one otherwise; the study must get the numpy one either way. The reference: numpy's path called directly."""
    from transformers import WhisperFeatureExtractor

    clip = tone(2.0, seed=5)
    ours = features.extractor(80)([clip], sampling_rate=16000, return_tensors="np")["input_features"][0]
    plain = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400)
    padded = np.pad(clip, (0, 480000 - clip.size))
    np.testing.assert_array_equal(ours, plain._np_extract_fbank_features(padded[None], "cpu")[0])
    # With the test extra torch is installed, so transformers' own call takes the torch STFT: different numbers.
    assert not np.array_equal(ours, plain([clip], sampling_rate=16000, return_tensors="np")["input_features"][0])
