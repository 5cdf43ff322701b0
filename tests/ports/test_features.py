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


# --- Qwen2-Audio: one 30-s window per clip, as Qwen2AudioProcessor makes it ---

@pytest.fixture(scope="module")
def qwen2_audio_processor(tmp_path_factory):
    """transformers' Qwen2AudioProcessor, offline: the stand-in tokenizer (real special tokens and ids) and
    Whisper-large-v3's feature extractor settings (128 mel bins; the rest are WhisperFeatureExtractor's defaults)."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    from ports.prompts import load_tokenizer
    from tests.ports.qwen2_audio_tokenizer_fixture import write_qwen2_audio_tokenizer

    tokenizer = load_tokenizer(write_qwen2_audio_tokenizer(tmp_path_factory.mktemp("qwen2_audio_tok")))
    return Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)


@pytest.mark.parametrize("seconds", [1.0, 7.3, 29.99, 30.0, 0.0201])  # 0.0201 s: 321 samples, 3 frames, 1 token
def test_qwen2_audio_matches_the_processor(qwen2_audio_processor, seconds):
    """The processor's <|AUDIO|> count and frame mask; our features equal its feature extractor's call (run with
    our numpy extractor so that the numbers, not only the shapes, can be compared exactly)."""
    proc, audio = qwen2_audio_processor, tone(seconds, seed=1)
    ours = features.qwen2_audio([audio])
    got = proc(text="<|audio_bos|><|AUDIO|><|audio_eos|>What", audio=[audio], sampling_rate=16000,
               return_tensors="np")
    assert (got["input_ids"] == proc.audio_token_id).sum() == ours["num_audio_tokens"][0]
    np.testing.assert_array_equal(ours["feature_attention_mask"], got["feature_attention_mask"])
    assert ours["input_features"].shape == got["input_features"].shape == (1, 128, 3000)
    exact = type(proc)(feature_extractor=features.extractor(128), tokenizer=proc.tokenizer)
    want = exact(text="<|AUDIO|>", audio=[audio], sampling_rate=16000, return_tensors="np")
    np.testing.assert_array_equal(ours["input_features"], want["input_features"])
    assert ours["num_audio_tokens"][0] == output_lengths(int(-(-audio.size // 160)))


def test_qwen2_audio_batch_and_refusal():
    out = features.qwen2_audio([tone(2.5), tone(30)], n_mels=80)
    assert out["input_features"].shape == (2, 80, 3000) and out["feature_attention_mask"].shape == (2, 3000)
    assert out["feature_attention_mask"].sum(1).tolist() == [250, 3000]
    assert out["num_audio_tokens"].tolist() == [62, 750]
    with pytest.raises(ValueError, match=r"clip 1 lasts 30.0 s; Qwen2-Audio accepts at most 30 s"):
        features.qwen2_audio([tone(2.5), tone(30.01)])  # the processor would keep its first 30 s without a word
    with pytest.raises(ValueError, match=r"clip 1 has 320 samples; Qwen2-Audio needs at least 321 \(3 mel frames\) "
                                         "for one audio token"):
        features.qwen2_audio([tone(2.5), tone(0.02)])  # 2 frames: the processor would write no <|AUDIO|>


# --- Voxtral: the whole clip padded to 30-s windows, its features split into windows ---

@pytest.fixture(scope="module")
def voxtral_processor(tmp_path_factory):
    """transformers' VoxtralProcessor, offline: the stand-in tekken tokenizer and our numpy extractor."""
    from transformers import VoxtralProcessor

    from ports.prompts import load_tokenizer
    from tests.ports.voxtral_tekken_fixture import write_tekken

    tokenizer = load_tokenizer(write_tekken(tmp_path_factory.mktemp("tekken")))
    return VoxtralProcessor(feature_extractor=features.extractor(128), tokenizer=tokenizer)


def processor_windows(proc, padded_clips):
    """VoxtralProcessor's features of audio that mistral-common has padded, as its apply_chat_template gets
    them: ``_retrieve_input_features`` with the processor's own default audio kwargs."""
    kwargs = proc._merge_kwargs(return_tensors="pt")["audio_kwargs"]
    return proc._retrieve_input_features(padded_clips, kwargs.pop("max_source_positions"), **kwargs).numpy()


@pytest.mark.parametrize("seconds", [[1.0], [30.0], [31.0], [65.0, 1.0, 30.5]])
def test_voxtral_windows_are_the_processors(voxtral_processor, seconds):
    clips = [tone(s, seed=i) for i, s in enumerate(seconds)]
    ours = features.voxtral(clips)
    windows = [-(-int(s * 16000) // 480000) for s in seconds]
    assert ours["windows_per_clip"].tolist() == windows
    assert ours["num_audio_tokens"].tolist() == [375 * w for w in windows]
    padded = [np.pad(c, (0, 480000 * w - c.size)) for c, w in zip(clips, windows, strict=True)]
    np.testing.assert_array_equal(ours["input_features"], processor_windows(voxtral_processor, padded))
    assert set(ours) == {"input_features", "windows_per_clip", "num_audio_tokens"}  # no frame mask


def test_voxtral_features_are_not_per_window_features():
    """Per-window extraction would differ: a window's last frames see the next window's samples, and the floor
    (maximum - 8 in log10) is the whole clip's, here set by the loud first window over the quiet second."""
    clip = np.concatenate([tone(30, seed=1), 0.001 * tone(20, seed=2)])
    ours = features.voxtral([clip], n_mels=80)["input_features"]
    alone = features.extractor(80)([clip[:480000], clip[480000:]], sampling_rate=16000, return_tensors="np")
    alone = alone["input_features"]
    np.testing.assert_array_equal(ours[0, :, :2990], alone[0, :, :2990])
    assert not np.array_equal(ours[0, :, -2:], alone[0, :, -2:])
    # one floor for the whole clip, set by its loud first window; the quiet window alone sets a floor far lower
    assert ours[0].min() == ours[1].min() > alone[1].min() + 0.5


def test_voxtral_refuses_audio_past_its_windows():
    with pytest.raises(ValueError, match=r"clip 0 lasts 61.0 s; Voxtral accepts at most 60 s"):
        features.voxtral([tone(61)], max_windows=2)
    long = np.full(2401 * features.SAMPLE_RATE, 0.1, np.float32)
    with pytest.raises(ValueError, match=r"lasts 2401.0 s; Voxtral accepts at most 2400 s"):  # 40 min: 80 windows
        features.voxtral([long])


@pytest.mark.parametrize("seconds", [1.0, 30.0, 31.0, 65.0, 0.01])
def test_voxtral_counts_and_windows_are_mistral_commons(voxtral_processor, tmp_path, seconds):
    """The official path end to end: mistral-common encodes a chat message holding the clip (its [AUDIO] count,
    its padded waveform), VoxtralProcessor turns that waveform into windows; ours from the bare clip match both."""
    from tests.ports.voxtral_tekken_fixture import mistral_common_chat, pcm16, write_tekken

    clip = pcm16(tone(seconds, seed=4))
    tokenized = mistral_common_chat(write_tekken(tmp_path) / "tekken.json", clip, "What emotion is this?")
    ours = features.voxtral([clip])
    assert tokenized.tokens.count(24) == ours["num_audio_tokens"][0]  # [AUDIO] is id 24
    (padded,) = (a.audio_array for a in tokenized.audios)
    np.testing.assert_array_equal(padded[:clip.size], clip)
    np.testing.assert_array_equal(ours["input_features"], processor_windows(voxtral_processor, [padded]))
