"""``ports.export`` of a Qwen2.5-Omni thinker: transformers' ``Qwen2_5OmniThinkerForConditionalGeneration``
loads it and computes what our port computes (a random tiny thinker, and the shipped reference model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

import esn_jax
import ports
from esn_jax import reference
from esn_jax.data import BUILDERS, pipeline
from ports.audio import AudioEncoderConfig, output_lengths
from ports.config import DecoderConfig, UnsupportedConfigError
from ports.qwen2_5_omni import Qwen2_5OmniConfig, Qwen2_5OmniThinker, init_inputs

AUDIO_ID, BOS, EOS, PAD = 60, 61, 62, 0
MEL, CHUNK = 16, 8
CONFIG = Qwen2_5OmniConfig(
    audio=AudioEncoderConfig(num_mel_bins=MEL, d_model=16, encoder_layers=2, encoder_attention_heads=2,
                             encoder_ffn_dim=32, max_source_positions=64, chunk_frames=CHUNK,
                             positions="sinusoidal", pool=True, output_dim=32),
    text=DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    audio_token_id=AUDIO_ID, audio_start_token_id=BOS, audio_end_token_id=EOS, hf_prefix="")
TOL = 1e-4


def random_params(config, seed=0):
    """Every leaf random (norm scales near 1, biases non-zero): a dropped or swapped tensor shows."""
    module = Qwen2_5OmniThinker(config)
    params = module.init(jax.random.key(seed), **init_inputs(config))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return module, jax.tree.unflatten(tree, noisy)


def batch(frames, seed=0):
    """Clips of ``frames`` valid mel frames and left-padded prompts (text, audio, text of varied lengths)."""
    f = max(frames)
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(frames), MEL, f)).astype(np.float32)
    fmask = (np.arange(f)[None] < np.array(frames)[:, None]).astype(np.int32)
    rows = [[5, 6, BOS, *[AUDIO_ID] * int(output_lengths(n)), EOS, *range(7, 8 + i)] for i, n in enumerate(frames)]
    t = max(map(len, rows))
    ids = np.array([[PAD] * (t - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (t - len(r)) + [1] * len(r) for r in rows], np.int32)
    return {"input_ids": ids, "attention_mask": mask, "input_features": feats, "feature_attention_mask": fmask}


def hf_logits(model, inputs):
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v, dtype=torch.long if k == "input_ids" else None)
                        for k, v in inputs.items()}).logits.numpy()


def test_config_round_trip():
    assert Qwen2_5OmniConfig.from_hf(CONFIG.to_hf()) == CONFIG
    with pytest.raises(UnsupportedConfigError, match="hf_prefix='thinker.'"):
        Qwen2_5OmniConfig(**{**CONFIG.__dict__, "hf_prefix": "thinker."}).to_hf()


def test_random_thinker_export_matches_transformers(tmp_path):
    module, params = random_params(CONFIG)
    ports.export("qwen2_5_omni", CONFIG, params, tmp_path / "hf")
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    inputs = batch([21, 8, 13])  # several chunks with a partial last one, one exact chunk, left padding
    want = hf_logits(hf, inputs)
    got = np.asarray(module.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()}))
    real = inputs["attention_mask"].astype(bool)
    assert np.abs(got[real] - want[real]).max() <= TOL
    np.testing.assert_array_equal(got[real].argmax(-1), want[real].argmax(-1))
    # convert reads the export back to the same parameters
    ports.convert(tmp_path / "hf", tmp_path / "back", "qwen2_5_omni")
    _, back = ports.load(tmp_path / "back")
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shipped_reference_export_predicts_the_same_labels(tmp_path):
    """The shipped reference model in transformers: the same constrained predictions on clips of the
    synthetic corpus (its tiny variant, built here), log-probabilities within 1e-4."""
    module, params, tokenizer, meta = reference.load_reference()
    ports.export("qwen2_5_omni", module.config, params, tmp_path / "hf")
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    BUILDERS["synthetic_prosody"](data_dir=str(tmp_path / "tfds"), config="tiny").download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    examples = pipeline.read("synthetic_prosody/tiny", "test", str(tmp_path / "tfds"), view="four")
    config = pipeline.PipelineConfig(batch_size=8, view="four")
    label_ids = [ids[0] for ids in meta["label_token_ids"]]
    for b in pipeline.Batches(examples, config):
        inputs = reference.model_batch(tokenizer, meta, b.features)
        ours = np.asarray(esn_jax.score_labels(module, params, inputs, meta["label_token_ids"]))
        theirs = torch.log_softmax(torch.as_tensor(hf_logits(hf, inputs)[:, -1]), -1).numpy()[:, label_ids]
        assert np.abs(ours - theirs).max() <= TOL
        np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
