"""CTranslate2 Whisper -> the shared audio encoder: a tiny random Whisper converted by CTranslate2's own
converter, and the real Whisper tiny.en, each against ``ctranslate2`` (and transformers for the tiny one)."""

import struct
import subprocess
import sys

import ctranslate2
import jax
import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

import ports
from esn_jax.data import espeak
from esn_jax.data.audio import resample, to_float
from ports import ct2_np, features, packaged
from ports.convert import from_ct2, from_hf_dir
from tests.ports.hf_fixtures import randomize_
from tests.ports.test_convert import assert_nothing_written

TINY = dict(vocab_size=60, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
            max_source_positions=50, max_target_positions=16, decoder_start_token_id=1, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random Whisper saved by transformers and converted by CTranslate2's converter, float32 and float16."""
    root = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    model = randomize_(WhisperForConditionalGeneration(WhisperConfig(**TINY)))
    model.save_pretrained(root / "hf")
    for quantization in ("float32", "float16", "int8"):
        ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / quantization),
                                                                               quantization=quantization)
    features_ = np.random.default_rng(0).standard_normal((2, 16, 100)).astype(np.float32)
    return root, model, features_


def encode_ours(config, params, feats):
    module = ports.MODELS["whisper_encoder"].build(config, np.float32)
    out, _ = jax.jit(module.apply)({"params": params}, feats)  # Whisper attends over the whole window
    return np.asarray(out, np.float32)


def encode_ct2(directory, feats):
    model = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    return np.asarray(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))))


def test_tiny_matches_transformers_and_ctranslate2(tiny):
    root, model, feats = tiny
    config, params = from_ct2(root / "float32")
    assert config == ports.audio.AudioEncoderConfig(num_mel_bins=16, d_model=32, encoder_layers=2,
                                                    encoder_attention_heads=4, encoder_ffn_dim=48,
                                                    max_source_positions=50)
    # The same weights through the Hugging Face table: the CTranslate2 table must land every tensor alike.
    hf_config, hf_params = from_hf_dir(root / "hf", "whisper_encoder")
    assert hf_config == config
    jax.tree.map(np.testing.assert_array_equal, params, hf_params)
    ours = encode_ours(config, params, feats)
    with torch.no_grad():
        ref = model.model.encoder(torch.as_tensor(feats)).last_hidden_state.numpy()
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(ours - encode_ct2(root / "float32", feats)).max() <= 1e-4 * np.abs(ref).max()


def test_float16_storage_is_read_as_stored(tiny):
    root, _, feats = tiny
    config, params = from_ct2(root / "float16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float16)}
    _, full = from_ct2(root / "float32")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(np.float16)), params, full)
    up = jax.tree.map(lambda x: x.astype(np.float32), params)
    ours, ref = encode_ours(config, up, feats), encode_ct2(root / "float16", feats)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_command_line(tiny, tmp_path):
    root, _, feats = tiny
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=whisper_encoder",
                          f"--ct2_dir={root / 'float16'}", f"--out={tmp_path / 'out'}", "--dtype=float32"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    module, params = ports.load(tmp_path / "out")
    config, stored = from_ct2(root / "float16", "float32")
    jax.tree.map(np.testing.assert_array_equal, params, stored)
    np.testing.assert_array_equal(np.asarray(jax.jit(module.apply)({"params": params}, feats)[0]),
                                  encode_ours(config, stored, feats))
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=llama",
                          f"--ct2_dir={root / 'float16'}", f"--out={tmp_path / 'x'}"], capture_output=True, text=True)
    assert run.returncode != 0 and "--ct2_dir converts --model=whisper_encoder" in run.stderr


def write_model_bin(path, spec, variables):
    """A model.bin in CTranslate2's binary format 6 (see ports.ct2_np), no aliases."""
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    blob = struct.pack("<I", 6) + string(spec) + struct.pack("<II", 1, len(variables))
    for name, value in variables.items():
        value = np.asarray(value)  # tobytes() is C order; ascontiguousarray would make a scalar 1-D
        blob += string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        blob += struct.pack("<BI", ids[value.dtype], value.nbytes) + value.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob + struct.pack("<I", 0))


def variables(directory):
    ckpt = ct2_np.CTranslate2Checkpoint(directory)
    return {k: ckpt.read(k) for k in list(ckpt.keys())}


def test_written_model_bin_reads_back(tiny, tmp_path):
    """The test's writer is faithful (so the bad-file cases below test the reader, not the writer)."""
    root, _, _ = tiny
    write_model_bin(tmp_path / "copy" / "model.bin", "WhisperSpec", variables(root / "float32"))
    jax.tree.map(np.testing.assert_array_equal, from_ct2(tmp_path / "copy")[1], from_ct2(root / "float32")[1])


def test_bad_files_are_refused_by_name(tiny, tmp_path):
    root, _, _ = tiny
    good = variables(root / "float32")
    data = (root / "float32" / "model.bin").read_bytes()

    def refused(directory, error, message):
        with pytest.raises(error, match=message):
            ports.convert_ct2(directory, tmp_path / "out")
        assert_nothing_written(tmp_path, "out")

    (tmp_path / "short").mkdir()
    for keep in (len(data) - 100, 30):
        (tmp_path / "short" / "model.bin").write_bytes(data[:keep])
        refused(tmp_path / "short", ports.CheckpointFileError, r"short/model.bin is truncated")
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "model.bin").write_bytes(struct.pack("<I", 5) + data[4:])
    refused(tmp_path / "v5", ports.CheckpointFileError, "binary format version 5; the reader takes version 6")
    write_model_bin(tmp_path / "spec" / "model.bin", "TransformerSpec", good)
    refused(tmp_path / "spec", ports.UnsupportedConfigError, "holds a CTranslate2 TransformerSpec; the reader "
                                                             "takes a WhisperSpec")
    refused(root / "int8", ports.UnsupportedConfigError, "stores encoder weights as integers")
    key = "encoder/layer_1/self_attention/linear_0/bias"
    write_model_bin(tmp_path / "kbias" / "model.bin", "WhisperSpec",
                    {**good, key: good[key] + np.float32(0.5)})
    refused(tmp_path / "kbias", ports.ConversionError, r"layers \[1\] have a nonzero key bias")
    write_model_bin(tmp_path / "missing" / "model.bin", "WhisperSpec",
                    {k: v for k, v in good.items() if k != "encoder/layer_0/ffn/linear_1/bias"})
    refused(tmp_path / "missing", ports.ConversionError, "missing encoder/layer_0/ffn/linear_1/bias")
    refused(tmp_path / "nowhere", FileNotFoundError, "has no model.bin; expected a CTranslate2 model directory")


def test_whisper_tiny_en_matches_ctranslate2(report):
    """The real weights on a real (synthesised) speech clip.

    Bound: both sides read the same float16 values, widen them exactly to float32 and compute in float32, so
    storage adds no error; what differs is float32 rounding in two implementations over 4 layers (~1e-6 of
    the output's scale). An error in reading or placing a weight shows at float16's own resolution
    (2^-11 ≈ 5e-4 relative) or far above it; the bound, 1e-4 of the output's largest magnitude, sits
    between the two.
    """
    directory = packaged.whisper_tiny_en_dir()
    config, params = from_ct2(directory, "float32")
    assert (config.num_mel_bins, config.d_model, config.encoder_layers, config.encoder_attention_heads,
            config.max_source_positions) == (80, 384, 4, 6, 1500)
    clip = to_float(espeak.synthesize("The quick brown fox jumps over the lazy dog.", "en-us", pitch=50,
                                      range_=50, rate=160, volume=100))
    clip = resample(clip, espeak.sample_rate())
    feats = features.extractor(n_mels=80)([clip], sampling_rate=features.SAMPLE_RATE, padding="max_length",
                                          return_tensors="np")["input_features"].astype(np.float32)
    ours, ref = encode_ours(config, params, feats), encode_ct2(directory, feats)
    assert ours.shape == ref.shape == (1, 1500, 384)
    diff, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    report(f"Whisper tiny.en: max |Δ| {diff:.2e}, output scale {scale:.2f}")
    assert diff <= 1e-4 * scale
