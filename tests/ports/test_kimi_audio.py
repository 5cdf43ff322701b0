"""Kimi-Audio port: each part against its reference (no transformers class exists for the whole model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperModel

from ports.audio import AudioEncoderConfig
from ports.config import DecoderConfig
from ports.kimi_audio import KimiAudio, KimiAudioConfig, init_inputs, rules
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import max_abs_diff, params_from_torch

TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6})
MEL, D, WIN = 16, 8, 32  # whisper max_source_positions=16: 32-frame windows stand in for 3000
MIMO_FROM, MIMO_LAYERS = 1, 2
TOL = 1e-4


@pytest.fixture(scope="module")
def kimi():
    """Our module + params converted through ``rules`` from torch modules laid out like the remote-code
    checkpoint (model.layers, model.mimo_layers, model.mimo_norm, model.vq_adaptor.layers.{0,3,4}, lm_head,
    mimo_output, whisper-large-v3/model.encoder); the converter refuses any missing or unused key."""
    torch.manual_seed(0)
    text = randomize_(Qwen2ForCausalLM(Qwen2Config(**TEXT)), 0)
    mimo = randomize_(Qwen2ForCausalLM(Qwen2Config(**{**TEXT, "num_hidden_layers": MIMO_LAYERS})), 1)
    adaptor = torch.nn.Sequential(torch.nn.Linear(4 * D, 32), torch.nn.SiLU(), torch.nn.Dropout(0.1),
                                  torch.nn.Linear(32, 32), torch.nn.LayerNorm(32, eps=1e-6))
    randomize_(adaptor, 2)
    whisper = randomize_(WhisperModel(WhisperConfig(
        num_mel_bins=MEL, d_model=D, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=16,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16, max_source_positions=WIN // 2,
        vocab_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)), 3)
    state = {**text.state_dict(),
             **{k.replace("model.layers.", "model.mimo_layers."): v for k, v in mimo.state_dict().items()
                if k.startswith("model.layers.")},
             "model.mimo_norm.weight": mimo.model.norm.weight, "mimo_output.weight": mimo.lm_head.weight,
             **{f"model.vq_adaptor.layers.{k}": v for k, v in adaptor.state_dict().items()},
             **{f"whisper-large-v3/model.{k}": v for k, v in whisper.state_dict().items()}}
    cfg = KimiAudioConfig(text=DecoderConfig.from_hf({**TEXT, "model_type": "qwen2"}),
                          whisper=AudioEncoderConfig(MEL, D, 2, 2, 16, WIN // 2), mimo_layers=MIMO_LAYERS,
                          mimo_from_layer=MIMO_FROM, adaptor_input_dim=4 * D)
    module = KimiAudio(cfg)
    params = params_from_torch(module, init_inputs(cfg), rules(cfg), state,
                               ignore=("whisper-large-v3/model.decoder.*",))
    return module, params, dict(text=text.eval(), mimo=mimo.eval(), adaptor=adaptor.eval(), whisper=whisper.eval())


def test_text_path_matches_transformers_qwen2_on_the_same_inputs_embeds(kimi):
    module, params, ref = kimi
    embeds = np.random.default_rng(0).normal(size=(2, 7, 32)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7], np.int32)
    with torch.no_grad():
        want = ref["text"](inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask),
                           position_ids=torch.from_numpy(np.maximum(mask.cumsum(1) - 1, 0))).logits.numpy()
    got = np.asarray(module.apply({"params": params}, inputs_embeds=jnp.asarray(embeds),
                                  attention_mask=jnp.asarray(mask)))
    diff = max_abs_diff(got[mask == 1], want[mask == 1])
    print(f"kimi_audio text path: max |dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_vq_adaptor_matches_torch_sequential(kimi):
    module, params, ref = kimi
    x = np.random.default_rng(1).normal(size=(3, 5, 4 * D)).astype(np.float32)
    with torch.no_grad():
        want = ref["adaptor"](torch.from_numpy(x)).numpy()
    got = module.apply({"params": params}, jnp.asarray(x), method=lambda m, x: m.vq_adaptor(x))
    assert max_abs_diff(got, want) < 1e-5


def test_whisper_tokens_are_the_encoder_output_stacked_by_four(kimi):
    module, params, ref = kimi
    feats = np.random.default_rng(2).normal(size=(2, MEL, WIN)).astype(np.float32)
    mask = (np.arange(WIN)[None] < np.array([[WIN], [9]])).astype(np.int32)
    with torch.no_grad():
        enc = ref["whisper"].encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    got, valid = module.apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask),
                              method=KimiAudio.whisper_tokens)
    assert max_abs_diff(got, enc.reshape(2, WIN // 8, 4 * D)) < 1e-5
    assert np.asarray(valid).sum(1).tolist() == [WIN // 8, 2]  # ceil(frames / 8)


def test_input_mixing_follows_the_formula(kimi):
    module, params, _ = kimi
    feats = np.random.default_rng(3).normal(size=(1, MEL, WIN)).astype(np.float32)
    fmask = (np.arange(WIN)[None] < 16).astype(np.int32)  # 2 tokens
    ids = np.array([[5, 6, 7, 8, 9]], np.int32)
    text_ids = np.array([[10, 11, 12, 12, 13]], np.int32)
    cont = np.array([[0, 0, 1, 1, 0]], bool)
    variables = {"params": params}
    got = np.asarray(module.apply(variables, jnp.asarray(ids), jnp.asarray(text_ids), jnp.asarray(feats),
                                  jnp.asarray(cont), jnp.asarray(fmask), method=KimiAudio.embed_inputs))
    table = np.asarray(params["language_model"]["model"]["embed_tokens"]["embedding"])
    tokens, _ = module.apply(variables, jnp.asarray(feats), jnp.asarray(fmask), method=KimiAudio.whisper_tokens)
    adapted = np.asarray(module.apply(variables, tokens, method=lambda m, x: m.vq_adaptor(x)))[0, :2]
    want = table[ids[0]] + table[text_ids[0]]
    want[2:4] = (table[ids[0, 2:4]] + adapted) * np.sqrt(2.0) + table[text_ids[0, 2:4]]
    assert max_abs_diff(got[0], want) < 1e-5
    with pytest.raises(ValueError, match=r"\[3\] continuous .* \[2\] audio tokens"):
        module.apply(variables, jnp.asarray(ids), jnp.asarray(text_ids), jnp.asarray(feats),
                     jnp.asarray(np.array([[0, 1, 1, 1, 0]], bool)), jnp.asarray(fmask),
                     method=KimiAudio.embed_inputs)


def test_mimo_branch_matches_qwen2_layers_from_the_branch_layer_output(kimi):
    module, params, ref = kimi
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        hidden = ref["text"](input_ids=torch.from_numpy(ids), output_hidden_states=True).hidden_states[MIMO_FROM + 1]
        want = ref["mimo"](inputs_embeds=hidden).logits.numpy()
    got = module.apply({"params": params}, jnp.asarray(hidden.numpy()), method=KimiAudio.mimo_logits)
    diff = max_abs_diff(got, want)
    print(f"kimi_audio mimo branch: max |dlogits| = {diff:.2e}")
    assert diff <= TOL
    assert jax.tree.leaves(params["mimo_layers"])[0].shape[0] == MIMO_LAYERS
