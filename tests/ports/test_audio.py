"""The shared Whisper-style encoder vs transformers' encoder classes (tiny random configs, float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (
    AudioFlamingo3EncoderConfig,
    Qwen2_5OmniAudioEncoderConfig,
    WhisperConfig,
)
from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3Encoder
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ports.audio import AudioEncoder, AudioEncoderConfig, check_clip_frames, encoder_rules, output_lengths
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import max_abs_diff, params_from_torch

MEL, D, HEADS, FFN, LAYERS = 16, 16, 2, 32, 2
TOL = 1e-5


def _features(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_omni_chunked_encoder_matches_transformers():
    """Clips of 21 (two full 8-frame chunks + a partial one), 8 (exactly one chunk) and 13 frames, in one
    right-padded batch: chunking, per-chunk positions, block-diagonal attention, pooling across chunks."""
    hf = randomize_(Qwen2_5OmniAudioEncoder(Qwen2_5OmniAudioEncoderConfig(
        num_mel_bins=MEL, d_model=D, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, n_window=4, output_dim=24, max_source_positions=64)))
    cfg = AudioEncoderConfig(MEL, D, LAYERS, HEADS, FFN, 64, chunk_frames=8, positions="sinusoidal",
                             pool=True, output_dim=24)
    lengths = [21, 8, 13]
    feats = _features((3, MEL, 24), 0)
    mask = (np.arange(24)[None] < np.array(lengths)[:, None]).astype(np.int32)
    with torch.no_grad():
        packed = torch.cat([torch.from_numpy(feats[i, :, :n]) for i, n in enumerate(lengths)], dim=1)
        want = hf(packed, feature_lens=torch.tensor(lengths)).last_hidden_state.numpy()
    module = AudioEncoder(cfg)
    params = params_from_torch(module, {"input_features": jnp.zeros((1, MEL, 8))},
                               encoder_rules("enc", "", cfg, final_norm="ln_post"), hf.state_dict(), "enc.",
                               ignore=("enc.audio_bos_eos_token.weight",))
    got, valid = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask))
    got, valid = np.asarray(got), np.asarray(valid)
    assert valid.sum(1).tolist() == [int(output_lengths(n)) for n in lengths] == [5, 2, 3]
    assert got[valid].shape == want.shape
    assert max_abs_diff(got[valid], want) < TOL


@pytest.mark.parametrize("lengths", [[20, 20], [20, 7, 13]], ids=["full-windows", "partial-windows"])
def test_af3_encoder_matches_transformers(lengths):
    hf = randomize_(AudioFlamingo3Encoder(AudioFlamingo3EncoderConfig(
        num_mel_bins=MEL, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_source_positions=10)))
    cfg = AudioEncoderConfig(MEL, D, LAYERS, HEADS, FFN, 10, pool=True)
    feats = _features((len(lengths), MEL, 20), 1)
    mask = (np.arange(20)[None] < np.array(lengths)[:, None]).astype(np.int32)
    with torch.no_grad():
        out = hf(torch.from_numpy(feats), input_features_mask=torch.from_numpy(mask))
    want = out.last_hidden_state.numpy()
    module = AudioEncoder(cfg)
    params = params_from_torch(module, {"input_features": jnp.zeros((1, MEL, 20))},
                               encoder_rules("enc", "", cfg), hf.state_dict(), "enc.")
    got, valid = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask))
    assert np.asarray(valid).sum(1).tolist() == [int(output_lengths(n)) for n in lengths]
    assert max_abs_diff(got, want) < TOL


def test_whisper_encoder_matches_transformers():
    hf = randomize_(WhisperEncoder(WhisperConfig(
        num_mel_bins=MEL, d_model=D, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, max_source_positions=10, decoder_layers=1, decoder_attention_heads=HEADS,
        decoder_ffn_dim=FFN)))
    cfg = AudioEncoderConfig(MEL, D, LAYERS, HEADS, FFN, 10)
    feats = _features((2, MEL, 20), 2)
    with torch.no_grad():
        want = hf(torch.from_numpy(feats)).last_hidden_state.numpy()
    module = AudioEncoder(cfg)
    params = params_from_torch(module, {"input_features": jnp.zeros((1, MEL, 20))},
                               encoder_rules("enc", "", cfg), hf.state_dict(), "enc.")
    got, valid = module.apply({"params": params}, jnp.asarray(feats))
    assert np.asarray(valid).all() and got.shape == want.shape
    assert max_abs_diff(got, want) < TOL


def test_full_window_encoder_refuses_a_wrong_window_length():
    module = AudioEncoder(AudioEncoderConfig(MEL, D, LAYERS, HEADS, FFN, 10))
    for frames in (30, 13):
        with pytest.raises(ValueError, match="takes 20 .* or an even number fewer"):
            module.init(jax.random.key(0), jnp.zeros((1, MEL, frames)))


def test_af3_window_cut_after_the_clip_gives_the_whole_windows_tokens():
    """Keys past a clip are masked, so a window cut 2 frames after the clip's end changes none of its tokens
    (transformers' AF3 encoder on the whole window is the reference); a cut closer than that is refused."""
    hf = randomize_(AudioFlamingo3Encoder(AudioFlamingo3EncoderConfig(
        num_mel_bins=MEL, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_source_positions=20)))
    cfg = AudioEncoderConfig(MEL, D, LAYERS, HEADS, FFN, 20, pool=True)
    lengths = [14, 9]
    feats = _features((2, MEL, 40), 3)  # padding frames carry values too, as the extractor's log-mel of silence
    mask = (np.arange(40)[None] < np.array(lengths)[:, None]).astype(np.int32)
    with torch.no_grad():
        want = hf(torch.from_numpy(feats), input_features_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    module = AudioEncoder(cfg)
    params = params_from_torch(module, {"input_features": jnp.zeros((1, MEL, 40))},
                               encoder_rules("enc", "", cfg), hf.state_dict(), "enc.")
    got, valid = module.apply({"params": params}, jnp.asarray(feats[..., :16]), jnp.asarray(mask[:, :16]))
    valid = np.asarray(valid)
    assert valid.sum(1).tolist() == [int(output_lengths(n)) for n in lengths]
    assert max_abs_diff(np.asarray(got)[valid], want[:, :valid.shape[1]][valid]) < TOL
    check_clip_frames(mask[:, :16], cfg)
    with pytest.raises(ValueError, match=r"clips \[0\] end within 2 frames of a window cut to 14"):
        check_clip_frames(mask[:, :14], cfg)
