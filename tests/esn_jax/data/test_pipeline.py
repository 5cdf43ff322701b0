"""synthetic_prosody (tiny config) built from nothing, its planted cues, and the pipeline from the built
split through ports.features into a tiny Qwen2.5-Omni thinker."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import ports
from esn_jax.data import FOUR, pipeline
from esn_jax.data import prepare as prepare_data
from esn_jax.data.synthetic_prosody import PROFILES
from ports.audio import AudioEncoderConfig
from ports.features import audio_flamingo3, qwen2_5_omni, qwen2_audio, voxtral
from ports.qwen2_5_omni import Qwen2_5OmniConfig, Qwen2_5OmniThinker, init_inputs
from tests.esn_jax.data import dummy_trees as trees


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    prepare_data.prepare("synthetic_prosody", data_dir=data_dir, config="tiny")
    return data_dir


def _all(data_dir):
    return {split: list(tfds.data_source("synthetic_prosody/tiny", split=split, data_dir=data_dir))
            for split in ("train", "validation", "test")}


def test_synthetic_prosody_is_speaker_disjoint_and_balanced(tiny_dir):
    splits = _all(tiny_dir)
    speakers = {split: {ex["speaker"] for ex in exs} for split, exs in splits.items()}
    assert all(len(s) == 1 for s in speakers.values())
    assert len(set.union(*speakers.values())) == 3
    for exs in splits.values():
        assert collections.Counter(ex["label"].decode() for ex in exs) == {e: 2 for e in FOUR}
        for ex in exs:
            assert FOUR[ex["emotion4"]] == ex["label"].decode() and ex["emotion"] == ex["emotion4"]


def test_synthetic_prosody_plants_rate_and_energy_cues(tiny_dir):
    """Same voice and sentence: the slow quiet profile (sad) is longer and weaker than the fast loud one."""
    by_key = {ex["id"].decode(): ex["audio"].astype(np.float64) for exs in _all(tiny_dir).values() for ex in exs}
    pairs = [(k, k.rsplit("/", 1)[0] + "/angry") for k in by_key if k.endswith("/sad")]
    assert len(pairs) == 6
    assert PROFILES["sad"][2] < PROFILES["angry"][2] and PROFILES["sad"][3] < PROFILES["angry"][3]
    for sad, angry in pairs:
        assert by_key[sad].size > 1.3 * by_key[angry].size
        assert np.sqrt(np.mean(by_key[sad] ** 2)) < 0.7 * np.sqrt(np.mean(by_key[angry] ** 2))


def test_synthetic_prosody_cli_builds_the_same_waveforms_twice(tmp_path, tiny_dir):
    """Two fresh processes (eSpeak NG keeps state between utterances that its API does not reset, so a build
    is deterministic from a fresh process), through the project command."""
    for out in ("a", "b"):
        subprocess.run([sys.executable, "-m", "experiments.prepare_data", "--dataset=synthetic_prosody",
                        "--builder_config=tiny", f"--data_dir={tmp_path / out}"], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[3])
    a, b, here = _all(str(tmp_path / "a")), _all(str(tmp_path / "b")), _all(tiny_dir)
    for split in a:
        assert [ex["id"] for ex in a[split]] == [ex["id"] for ex in b[split]]
        for x, y in zip(a[split], b[split], strict=True):
            np.testing.assert_array_equal(x["audio"], y["audio"])
    # the in-process fixture build ran first in its process too
    assert [ex["audio"].size for ex in here["test"]] == [ex["audio"].size for ex in a["test"]]


def test_prepare_data_reports_skips_and_requires_a_manual_dir(tmp_path):
    trees.crema_d(tmp_path / "CREMA-D")
    builder = prepare_data.prepare("crema_d_local", manual_dir=str(tmp_path / "CREMA-D"),
                                   data_dir=str(tmp_path / "out"))
    text = prepare_data.summary(builder)
    assert "skipped: 5" in text and "notes.wav: bad_name" in text and "1003_MTI_SAD_XX: empty" in text
    assert sum(s.num_examples for s in builder.info.splits.values()) == 6
    with pytest.raises(ValueError, match="AudioWAV"):
        prepare_data.prepare("crema_d_local", data_dir=str(tmp_path / "out"))


def _tiny_thinker(n_mels):
    audio = AudioEncoderConfig(num_mel_bins=n_mels, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=32, max_source_positions=100, chunk_frames=200,
                               positions="sinusoidal", pool=True, output_dim=32)
    text = ports.DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    config = Qwen2_5OmniConfig(audio=audio, text=text, audio_token_id=61, audio_start_token_id=62,
                               audio_end_token_id=63)
    module = Qwen2_5OmniThinker(config)
    return module, module.init(jax.random.key(0), **init_inputs(config))["params"]


def test_pipeline_feeds_fixed_shape_batches_into_a_tiny_port(tiny_dir):
    n_mels, batch_size = 16, 3
    cfg = pipeline.PipelineConfig(model="qwen2_5_omni", batch_size=batch_size, buckets=(1.5, 2.5, 4.0),
                                  n_mels=n_mels, view="four")
    stored = {ex["id"].decode(): ex for ex in _all(tiny_dir)["test"]}
    batches = list(pipeline.Batches(pipeline.read("synthetic_prosody/tiny", "test", tiny_dir, view="four"), cfg))

    seen = []
    for b in batches:
        frames = {1.5: 200, 2.5: 400, 4.0: 400}[b.seconds]  # 100 frames/s rounded up to 200-frame chunks
        assert b.features["input_features"].shape == (batch_size, n_mels, frames)
        assert b.features["feature_attention_mask"].shape == (batch_size, frames)
        for i in np.flatnonzero(b.valid):
            ex = stored[b.ids[i]]
            assert b.labels[i] == ex["emotion4"]
            n = ex["audio"].size
            assert pipeline.bucket_of(n, cfg.buckets) == b.seconds
            # the clip's own features, as ports.features computes them alone, sit unchanged in the batch
            alone = qwen2_5_omni([ex["audio"] / 32767.0], n_mels=n_mels)
            valid = int(alone["feature_attention_mask"].sum())
            np.testing.assert_allclose(b.features["input_features"][i, :, :valid],
                                       alone["input_features"][0, :, :valid], atol=1e-5)
            np.testing.assert_array_equal(b.features["feature_attention_mask"][i], np.arange(frames) < valid)
            seen.append(b.ids[i])
        assert b.valid[:b.valid.sum()].all()  # padding rows come last
    assert sorted(seen) == sorted(stored)  # every clip exactly once

    module, params = _tiny_thinker(n_mels)
    traces = []

    @jax.jit
    def answer_logits(params, ids, mask, feats, feat_mask):
        traces.append(ids.shape)
        return module.apply({"params": params}, input_ids=ids, attention_mask=mask, input_features=feats,
                            feature_attention_mask=feat_mask, logits_positions=jnp.full((ids.shape[0], 1),
                                                                                         ids.shape[1] - 1))

    for b in batches:
        feats, feat_mask = b.features["input_features"], b.features["feature_attention_mask"]
        _, valid = module.apply({"params": params}, feats, feat_mask, method=lambda m, f, k: m.audio_tower(f, k))
        n_audio = np.asarray(valid).sum(-1)
        width = feat_mask.shape[1] // 4 + 3  # the most audio tokens a full bucket gives, plus start/end/question
        ids = np.zeros((batch_size, width), np.int32)
        for i, n in enumerate(n_audio):  # left-padded: <start> <AUDIO>*n <end> <question>
            ids[i, width - n - 3:] = [62, *[61] * n, 63, 5]
        logits = answer_logits(params, ids, (ids != 0).astype(np.int32), feats, feat_mask)
        assert logits.shape == (batch_size, 1, 64) and np.isfinite(np.asarray(logits)).all()
    shapes = {b.features["input_features"].shape for b in batches}
    assert len(traces) == len(shapes) < len(batches)  # one compile per bucket shape, not per batch


def test_af3_windows_are_cut_after_the_bucket(tiny_dir):
    """One-window buckets carry 100·s + 2 frames (what the encoder needs, see ports.audio): the first frames of
    the 30-s window the feature extractor computes, with the same mask."""
    cfg = pipeline.PipelineConfig(model="audio_flamingo3", batch_size=2, buckets=(2.5, 45.0), n_mels=16,
                                  view="four")
    examples = list(pipeline.read("synthetic_prosody/tiny", "test", tiny_dir, view="four"))[:2]
    short = pipeline.make_batch(examples, 2.5, cfg)
    assert short.features["input_features"].shape == (2, 16, 252)
    whole = audio_flamingo3([ex.wave for ex in examples], n_mels=16)
    for key in ("input_features", "input_features_mask"):
        np.testing.assert_array_equal(short.features[key], whole[key][..., :252])
    long_ = pipeline.make_batch(examples, 45.0, cfg)  # two windows per clip: whole windows
    assert long_.features["input_features"].shape == (4, 16, 3000)


def test_qwen2_audio_window_is_cut_after_the_bucket(tiny_dir):
    """One window per clip, cut like AF3's (Qwen2-Audio masks the keys past a clip too): the first 100·s + 2
    frames of the 30-s window and its frame mask; the token counts are the whole window's. Padding rows repeat
    the last clip."""
    cfg = pipeline.PipelineConfig(model="qwen2_audio", batch_size=3, buckets=(2.5, 30.0), n_mels=16, view="four")
    examples = list(pipeline.read("synthetic_prosody/tiny", "test", tiny_dir, view="four"))[:2]
    short = pipeline.make_batch(examples, 2.5, cfg)
    assert short.features["input_features"].shape == (3, 16, 252)
    assert short.features["feature_attention_mask"].shape == (3, 252)
    whole = qwen2_audio([ex.wave for ex in [*examples, examples[-1]]], n_mels=16)
    for key in ("input_features", "feature_attention_mask"):
        np.testing.assert_array_equal(short.features[key], whole[key][..., :252])
    np.testing.assert_array_equal(short.features["num_audio_tokens"], whole["num_audio_tokens"])
    assert short.valid.tolist() == [True, True, False]
    assert pipeline.make_batch(examples, 30.0, cfg).features["input_features"].shape == (3, 16, 3000)


def test_qwen2_audio_buckets_stop_at_30_s():
    with pytest.raises(ValueError, match=r"qwen2_audio takes clips of at most 30 s"):
        pipeline.PipelineConfig(model="qwen2_audio", buckets=(2.0, 45.0))
    long_ = pipeline.Example(np.full(40 * 16000, 0.1, np.float32), 0, "s", "a")  # truncated to the 30-s bucket
    cfg = pipeline.PipelineConfig(model="qwen2_audio", batch_size=1, buckets=(30.0,), n_mels=16)
    (batch,) = pipeline.Batches([long_], cfg)
    assert batch.features["feature_attention_mask"].sum() == 3000 and batch.features["num_audio_tokens"][0] == 750


def test_voxtral_windows_are_whole_and_padded_to_the_bucket(tiny_dir):
    """Voxtral's windows are never cut (its encoder masks nothing): the clips' windows as ports.features makes
    them, then all-zero windows up to B·W_s that belong to no clip."""
    cfg = pipeline.PipelineConfig(model="voxtral", batch_size=3, buckets=(2.5, 45.0), n_mels=16, view="four")
    examples = list(pipeline.read("synthetic_prosody/tiny", "test", tiny_dir, view="four"))[:2]
    clips = [ex.wave for ex in [*examples, examples[-1]]]
    for seconds, windows in ((2.5, 1), (45.0, 2)):
        batch = pipeline.make_batch(examples, seconds, cfg)
        assert batch.features["input_features"].shape == (3 * windows, 16, 3000)
        whole = voxtral(clips, n_mels=16)
        assert batch.features["windows_per_clip"].tolist() == [1, 1, 1]
        assert batch.features["num_audio_tokens"].tolist() == [375, 375, 375]
        np.testing.assert_array_equal(batch.features["input_features"][:3], whole["input_features"])
        assert not batch.features["input_features"][3:].any()
        assert set(batch.features) == {"input_features", "windows_per_clip", "num_audio_tokens"}
