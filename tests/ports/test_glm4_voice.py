"""GLM-4-Voice speech tokenizer port: each part against an independent computation (torch conv1d with explicit left
padding, transformers' WhisperEncoderLayer with the block-causal additive mask, numpy pooling and argmin), and a
checkpoint directory in the released layout through the converter CLI."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperEncoderLayer

import ports
from ports.audio import attention_mask
from ports.glm4_voice import IGNORE, GLM4VoiceTokenizer, GLM4VoiceTokenizerConfig, init_inputs, rules
from ports.models import abstract_params
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import FIXTURES, count_params, hf_param_count, max_abs_diff, params_from_torch

jax.config.update("jax_default_matmul_precision", "highest")

MEL, D, HEADS, FFN, QPOS, LAYERS, POOL, VOCAB, BLOCK = 16, 16, 2, 32, 2, 4, 4, 48, 7
MAXPOS = 1500  # 30-s segments (3000 mel frames) for the clip tests; other tests cut windows short
TOL = 1e-5

# The released config.json's attributes (WhisperVQConfig, model_type "whisper") with tiny sizes: the decoder,
# generation, SpecAugment and VQ-training fields are there too, as in THUDM/glm-4-voice-tokenizer.
HF_CONFIG = {
    "_name_or_path": "glm-4-voice-tokenizer", "architectures": ["WhisperVQEncoder"], "model_type": "whisper",
    "activation_dropout": 0.0, "activation_function": "gelu", "apply_spec_augment": False, "attention_dropout": 0.0,
    "begin_suppress_tokens": [220, 50257], "bos_token_id": 50257, "classifier_proj_size": 256, "d_model": D,
    "decoder_attention_heads": HEADS, "decoder_ffn_dim": FFN, "decoder_layerdrop": 0.0, "decoder_layers": 2,
    "decoder_start_token_id": 50258, "dropout": 0.0, "encoder_attention_heads": HEADS,
    "encoder_causal_attention": False, "encoder_causal_convolution": True, "encoder_ffn_dim": FFN,
    "encoder_layerdrop": 0.0, "encoder_layers": LAYERS, "eos_token_id": 50257, "init_std": 0.02,
    "is_encoder_decoder": True, "mask_feature_length": 10, "mask_feature_min_masks": 0, "mask_feature_prob": 0.0,
    "mask_time_length": 10, "mask_time_min_masks": 2, "mask_time_prob": 0.05, "max_source_positions": MAXPOS,
    "max_target_positions": 448, "median_filter_width": 7, "num_hidden_layers": LAYERS, "num_mel_bins": MEL,
    "pad_token_id": 50256, "pooling_kernel_size": POOL, "pooling_position": QPOS, "pooling_type": "avg",
    "quantize_causal_block_size": BLOCK, "quantize_causal_encoder": False, "quantize_commit_coefficient": 0.25,
    "quantize_ema_decay": 0.99, "quantize_encoder_only": True, "quantize_loss_scale": 10.0,
    "quantize_position": QPOS, "quantize_restart_interval": 100, "quantize_vocab_size": VOCAB,
    "scale_embedding": False, "skip_language_detection": True, "torch_dtype": "float32",
    "transformers_version": "4.44.2", "use_cache": True, "use_weighted_layer_sum": False, "vocab_size": 51866,
}


def whisper_layer_config():
    cfg = WhisperConfig(d_model=D, encoder_attention_heads=HEADS, encoder_ffn_dim=FFN, num_mel_bins=MEL,
                        max_source_positions=MAXPOS, activation_function="gelu")
    cfg._attn_implementation = "eager"
    return cfg


class Released(torch.nn.Module):
    """The released checkpoint's tensors under their names: no ``model.encoder.`` prefix, QPOS layers only."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(MEL, D, 3)
        self.conv2 = torch.nn.Conv1d(D, D, 3, stride=2)
        self.embed_positions = torch.nn.Embedding(MAXPOS, D)
        self.layers = torch.nn.ModuleList([WhisperEncoderLayer(whisper_layer_config()) for _ in range(QPOS)])
        self.codebook = torch.nn.Embedding(VOCAB, D)
        self.embed_positions2 = torch.nn.Embedding(-(-MAXPOS // POOL), D)
        self.register_buffer("ema_count", torch.rand(VOCAB) + 0.5)
        self.register_buffer("ema_weight", torch.zeros(VOCAB, D))


@pytest.fixture(scope="module")
def released():
    """Random weights; the codebook drawn from a Gaussian fitted to the pooled states of random features and of
    a clip's log-mel features, so that the nearest row varies from code to code."""
    torch.manual_seed(0)
    model = randomize_(Released(), 1)
    feats = np.random.default_rng(10).normal(size=(4, MEL, 48)).astype(np.float32)
    *_, clip_feats, clip_mask = clip_features(3, 10)
    states = np.concatenate([reference_states(model, feats, np.ones((4, 48), np.int32))[0].reshape(-1, D),
                             reference_states(model, clip_feats, clip_mask)[0].reshape(-1, D)])
    rows = states.mean(0) + states.std(0) * np.random.default_rng(11).normal(size=(VOCAB, D))
    with torch.no_grad():
        model.codebook.weight.copy_(torch.from_numpy(rows.astype(np.float32)))
        model.ema_weight.copy_(model.codebook.weight * model.ema_count[:, None])
    return model


@pytest.fixture(scope="module")
def ours(released):
    """Our module and params filled from the torch tensors through ``rules`` (no file in between)."""
    cfg = GLM4VoiceTokenizerConfig.from_hf(HF_CONFIG)
    module = GLM4VoiceTokenizer(cfg)
    params = params_from_torch(module, init_inputs(cfg), rules(cfg), released.state_dict(), ignore=IGNORE)
    return module, params


def block_causal_reference(valid, block):
    """[B, S, S] bool, one (q, k) at a time: k visible from q iff (k <= q or same block) and k valid."""
    b, s = valid.shape
    out = np.zeros((b, s, s), bool)
    for i in range(b):
        for q in range(s):
            for k in range(s):
                out[i, q, k] = bool(valid[i, k]) and (k <= q or k // block == q // block)
    return out


def additive(mask_bool):
    """bool [B, Q, K] -> the official additive float mask [B, 1, Q, K] (0 or finfo.min)."""
    m = torch.from_numpy(mask_bool)
    return ((1.0 - m.float()) * torch.finfo(torch.float32).min)[:, None]


def pool_reference(h, k):
    s, c, d = h.shape
    padded = np.concatenate([h, np.zeros((s, (-c) % k, d), h.dtype)], axis=1)
    return padded.reshape(s, -1, k, d).mean(axis=2)


def argmin_reference(x, codebook):
    x, c = x.astype(np.float64), codebook.astype(np.float64)
    dist = (c ** 2).sum(-1) + (x ** 2).sum(-1, keepdims=True) - 2 * x @ c.T
    return dist.argmin(-1), np.sort(dist, -1)


def reference(model, feats, mask, block=BLOCK):
    """The whole tokenizer as the official forward computes it, from the torch tensors: causal convs, positions,
    WhisperEncoderLayers with the block-causal additive mask, zero-padded AvgPool(4), argmin. Returns codes,
    valid, pooled states and each code's margin to the second-nearest row."""
    pooled, valid = reference_states(model, feats, mask, block)
    codes, dist = argmin_reference(pooled, model.codebook.weight.detach().numpy())
    return codes, valid, pooled, dist[..., 1] - dist[..., 0]


def reference_states(model, feats, mask, block=BLOCK):
    """(pooled states [S, N, D], valid [S, N]) of :func:`reference`."""
    with torch.no_grad():
        x = torch.from_numpy(feats)
        h = F.gelu(F.conv1d(F.pad(x, (2, 0)), model.conv1.weight, model.conv1.bias))
        h = F.gelu(F.conv1d(F.pad(h, (2, 0)), model.conv2.weight, model.conv2.bias, stride=2))
        h = h.permute(0, 2, 1) + model.embed_positions.weight[:h.shape[-1]]
        conv_mask = mask[:, ::2].astype(bool)
        add = additive(block_causal_mask_fast(conv_mask, block))
        for layer in model.layers:
            h = layer(h, add)
        pooled = pool_reference(h.numpy(), POOL)
    return pooled, conv_mask[:, ::POOL]


def block_causal_mask_fast(valid, block):
    q, k = np.arange(valid.shape[1])[:, None], np.arange(valid.shape[1])[None, :]
    return ((k <= q) | (k // block == q // block))[None] & valid[:, None, :]


def test_block_causal_mask_matches_a_direct_construction():
    """S = 13 conv frames, blocks of 5 (the last one partial), rows with 13, 7 and 1 valid frames."""
    valid = np.arange(13)[None] < np.array([[13], [7], [1]])
    want = block_causal_reference(valid, 5)
    np.testing.assert_array_equal(np.asarray(attention_mask(jnp.asarray(valid), 5)), want)
    np.testing.assert_array_equal(block_causal_mask_fast(valid, 5), want)
    assert want[1, 2, 4] and not want[1, 2, 5] and not want[1, 8, 8] and want[1, 8, 6]  # padded key 8 is masked
    np.testing.assert_array_equal(np.asarray(attention_mask(jnp.asarray(valid))), valid[:, None, :])


@pytest.mark.parametrize("which", ["conv1", "conv2"])
def test_causal_convolutions_match_left_padded_conv1d(released, ours, which):
    module, params = ours
    channels, stride = (MEL, 1) if which == "conv1" else (D, 2)
    x = np.random.default_rng(0).normal(size=(2, channels, 11)).astype(np.float32)
    conv = getattr(released, which)
    with torch.no_grad():
        want = F.conv1d(F.pad(torch.from_numpy(x), (2, 0)), conv.weight, conv.bias, stride=stride).numpy()
    got = module.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 1)),
                       method=lambda m, x: getattr(m.encoder, which)(x))
    assert got.shape == (2, -(-11 // stride), D)
    assert max_abs_diff(np.asarray(got).transpose(0, 2, 1), want) < TOL


def test_encoder_layers_match_whisper_encoder_layer_with_the_block_causal_mask(released, ours):
    module, params = ours
    h = np.random.default_rng(1).normal(size=(3, 13, D)).astype(np.float32)
    mask = block_causal_reference(np.arange(13)[None] < np.array([[13], [9], [2]]), 5)
    with torch.no_grad():
        want = torch.from_numpy(h)
        for layer in released.layers:
            want = layer(want, additive(mask))
    got = module.apply({"params": params}, jnp.asarray(h), jnp.asarray(mask),
                       method=lambda m, h, mask: m.encoder.layers(h, mask)[0])
    assert max_abs_diff(got, want.numpy()) < TOL  # padded queries included: they run like real ones


def test_pooling_matches_numpy(ours):
    """26 frames -> 13 conv frames (not a multiple of 4): the pad zeros enter the last average."""
    module, params = ours
    feats = np.random.default_rng(2).normal(size=(2, MEL, 26)).astype(np.float32)
    mask = (np.arange(26)[None] < np.array([[26], [11]])).astype(np.int32)
    variables = {"params": params}
    h, conv_valid = module.apply(variables, jnp.asarray(feats), jnp.asarray(mask),
                                 method=lambda m, x, k: m.encoder(x, k))
    states, valid = module.apply(variables, jnp.asarray(feats), jnp.asarray(mask),
                                 method=GLM4VoiceTokenizer.pooled_states)
    assert states.shape == (2, 4, D) and h.shape == (2, 13, D)
    assert max_abs_diff(states, pool_reference(np.asarray(h), POOL)) < TOL
    assert np.asarray(valid).sum(1).tolist() == [4, 2]  # ceil(ceil(11 / 2) / 4) = 2
    np.testing.assert_array_equal(np.asarray(valid), np.asarray(conv_valid)[:, ::POOL])


def test_quantizer_matches_numpy_argmin_and_takes_the_first_of_tied_rows(ours):
    module, params = ours
    rng = np.random.default_rng(3)
    codebook = np.asarray(params["codebook"]).copy()
    codebook[9] = codebook[4]  # an exact tie: rows 4 and 9
    states = rng.normal(scale=0.3, size=(2, 5, D)).astype(np.float32)
    states[0, 1] = codebook[4]
    states[1, 3] = codebook[4] + 1e-3
    got = np.asarray(module.apply({"params": {**params, "codebook": jnp.asarray(codebook)}}, jnp.asarray(states),
                                  method=GLM4VoiceTokenizer.quantize))
    want, _ = argmin_reference(states, codebook)
    np.testing.assert_array_equal(got, want)
    assert got[0, 1] == 4 and got[1, 3] == 4 and got.dtype == np.int32


def test_tokenizer_matches_the_reference_composition(released, ours):
    """Random features, one row padded (its padding frames carry values): codes, valid flags, pooled states."""
    module, params = ours
    feats = np.random.default_rng(4).normal(size=(2, MEL, 40)).astype(np.float32)
    mask = (np.arange(40)[None] < np.array([[40], [23]])).astype(np.int32)
    want, want_valid, want_states, margin = reference(released, feats, mask)
    assert margin.min() > 1e-4  # no near-tie: equal codes are a real check
    states, _ = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask),
                             method=GLM4VoiceTokenizer.pooled_states)
    codes, valid = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask))
    assert max_abs_diff(states, want_states) < TOL
    np.testing.assert_array_equal(np.asarray(valid), want_valid)
    np.testing.assert_array_equal(np.asarray(codes), want)
    assert np.asarray(valid).sum(1).tolist() == [5, 3] and len(set(want[0].tolist())) > 1


@pytest.fixture(scope="module")
def hf_dir(released, tmp_path_factory):
    root = tmp_path_factory.mktemp("glm4") / "glm-4-voice-tokenizer"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file({k: v.detach().contiguous() for k, v in released.state_dict().items()}, root / "model.safetensors")
    return root


@pytest.fixture(scope="module")
def converted(hf_dir):
    out = hf_dir.parent / "ours"
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=glm4_voice_tokenizer",
                          f"--hf_dir={hf_dir}", f"--out={out}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return ports.load(out)


def test_converted_checkpoint_gives_the_reference_codes(released, converted):
    module, params = converted
    assert module.config.encoder.encoder_layers == QPOS and module.config.encoder.block_size == BLOCK
    assert jax.tree.leaves(params["encoder"]["layers"])[0].shape[0] == QPOS and "layer_norm" not in params["encoder"]
    np.testing.assert_array_equal(params["codebook"], released.codebook.weight.detach().numpy())
    feats = np.random.default_rng(5).normal(size=(3, MEL, 48)).astype(np.float32)
    mask = (np.arange(48)[None] < np.array([[48], [17], [1]])).astype(np.int32)
    want, want_valid, _, margin = reference(released, feats, mask)
    assert margin.min() > 1e-4
    codes, valid = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(valid), want_valid)
    np.testing.assert_array_equal(np.asarray(codes), want)
    jitted = jax.jit(lambda p, f, m: module.apply({"params": p}, f, m))(params, feats, mask.astype(bool))
    np.testing.assert_array_equal(np.asarray(jitted[0]), want)  # under jit the mask checks are skipped, not the math


def clip_features(seconds, seed):
    """extract_speech_token's features for one clip: its 30-s segments in one call, padded to the longest
    rounded up to 1280 samples, with the extractor's attention mask."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    # noise under an envelope and a pitch that change every 0.25 s: features (and codes) that vary in time
    steps = np.repeat(rng.uniform(size=(2, -(-n // 4000))), 4000, axis=1)[:, :n]
    tone = np.sin(2 * np.pi * np.cumsum(200 + 3000 * steps[1]) / 16000)
    clip = (steps[0] ** 2 * (rng.normal(scale=0.3, size=n) + tone)).astype(np.float32)
    segments = [clip[s:s + 480000] for s in range(0, clip.size, 480000)]
    fe = WhisperFeatureExtractor(feature_size=MEL, sampling_rate=16000, hop_length=160, n_fft=400)
    out = fe(segments, sampling_rate=16000, padding="longest", pad_to_multiple_of=1280, return_attention_mask=True,
             return_tensors="np")
    return clip, segments, out["input_features"].astype(np.float32), out["attention_mask"].astype(np.int32)


@pytest.mark.parametrize("seconds", [1, 30, 37])
def test_clip_codes_per_30s_segment(released, converted, seconds):
    module, params = converted
    clip, segments, feats, mask = clip_features(seconds, seconds)
    codes, valid = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask))
    states, _ = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask),
                             method=GLM4VoiceTokenizer.pooled_states)
    per_segment = np.asarray(valid).sum(1).tolist()
    assert per_segment == [-(-len(s) // 1280) for s in segments]
    assert sum(per_segment) == module.config.num_codes(clip.size) == {1: 13, 30: 375, 37: 375 + 88}[seconds]
    want, want_valid, want_states, margin = reference(released, feats, mask)
    np.testing.assert_array_equal(np.asarray(valid), want_valid)
    assert max_abs_diff(states, want_states) < 1e-4
    assert len(set(want[want_valid].tolist())) > 1
    close = margin < 1e-4  # a near-tie may fall either way at float32; none is expected, few are tolerated
    assert close.mean() < 0.01
    np.testing.assert_array_equal(np.asarray(codes)[~close], want[~close])


def test_num_codes_counts_each_segment():
    cfg = GLM4VoiceTokenizerConfig.from_hf(HF_CONFIG)
    assert cfg.samples_per_code == 1280
    n = np.array([0, 1, 1280, 1281, 480000, 480001, 592000])
    np.testing.assert_array_equal(cfg.num_codes(n), [0, 1, 1, 2, 375, 376, 375 + 88])


def test_released_config_builds_abstractly_with_whisper_sized_layers():
    """The released sizes (configs/models, the memory plan's source): 16 of the 32 Whisper-large-v3 layers, 128
    mels, codebook 16384 x 1280. Independent count: transformers' WhisperEncoder with 16 layers on the meta device,
    less its final layer_norm."""
    cfg = GLM4VoiceTokenizerConfig.from_hf(json.loads((FIXTURES / "glm4_voice_tokenizer.config.json").read_text()))
    sizes = (cfg.encoder.encoder_layers, cfg.encoder.block_size, cfg.pool_kernel, cfg.codebook_size)
    assert sizes == (16, 200, 4, 16384)
    assert cfg.encoder.causal_conv and not cfg.encoder.final_norm
    _, abstract = abstract_params("glm4_voice_tokenizer", cfg, jnp.bfloat16)
    whisper = WhisperConfig(d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120, encoder_layers=16,
                            num_mel_bins=128, max_source_positions=1500)
    assert count_params(abstract) == sum(hf_param_count(WhisperEncoder, whisper).values()) - 2 * 1280 + 16384 * 1280


@pytest.mark.parametrize("change, message", [
    ({"pooling_type": "max"}, r"pooling_type='max' is not implemented"),
    ({"pooling_position": 1}, r"pooling_position=1 != quantize_position=2"),
    ({"quantize_fancy": True}, r"unknown attributes \['quantize_fancy'\]"),
    ({"quantize_causal_encoder": True}, r"quantize_causal_encoder=True is not implemented"),
    ({"quantize_vocab_size": None}, r"quantize_vocab_size=None"),
    ({"quantize_position": 5}, r"quantize_position=5 is not in 1..encoder_layers=4"),
])
def test_unsupported_config_is_named_and_nothing_is_written(hf_dir, tmp_path, change, message):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**HF_CONFIG, **change}))
    (bad / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    with pytest.raises(ports.UnsupportedConfigError, match=message):
        ports.convert(bad, tmp_path / "out", "glm4_voice_tokenizer")
    assert not (tmp_path / "out").exists()


def test_plain_convolutions_and_key_mask_only_are_supported():
    cfg = GLM4VoiceTokenizerConfig.from_hf({**HF_CONFIG, "encoder_causal_convolution": False,
                                            "quantize_causal_block_size": None})
    assert not cfg.encoder.causal_conv and cfg.encoder.block_size is None


def test_wrong_codebook_shape_is_named(released, hf_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = {k: v.detach().contiguous() for k, v in released.state_dict().items()}
    tensors["codebook.weight"] = torch.zeros(VOCAB, D + 1)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(ports.ConversionError, match=r"wrong shape codebook\.weight"):
        ports.convert(bad, tmp_path / "out", "glm4_voice_tokenizer")
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_named(ours):
    module, params = ours
    feats = jnp.zeros((2, MEL, 16))
    with pytest.raises(ValueError, match=r"segments \[1\] have no valid mel frame"):
        module.apply({"params": params}, feats, jnp.asarray(np.array([[1] * 16, [0] * 16])))
    with pytest.raises(ValueError, match="not a prefix of ones"):
        module.apply({"params": params}, feats, jnp.asarray(np.array([[1] * 16, [0, 1] * 8])))
    with pytest.raises(ValueError, match="an even number from 2 to 2 \\* max_source_positions = 3000"):
        module.apply({"params": params}, jnp.zeros((1, MEL, 15)), jnp.ones((1, 15)))
    with pytest.raises(ValueError, match="has 8 mel bins; the tokenizer expects 16"):
        module.apply({"params": params}, jnp.zeros((1, 8, 16)), jnp.ones((1, 16)))
