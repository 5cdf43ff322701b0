"""Kimi-Audio port: each part against its reference (no transformers class exists for the whole model), and
conversion of a checkpoint directory in the remote-code layout with its ``whisper-large-v3/`` sub-checkpoint."""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperForConditionalGeneration, WhisperModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import ports
from ports.audio import AudioEncoderConfig
from ports.config import DecoderConfig
from ports.kimi_audio import KimiAudio, KimiAudioConfig, init_inputs, rules
from ports.models import abstract_params
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import FIXTURES, count_params, hf_param_count, max_abs_diff, params_from_torch

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
    with pytest.raises(ValueError, match=r"continuous .*\(\[3\] per prompt\).*\(\[2\] per row"):
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


def test_multi_token_labels_are_scored_as_kimi_writes_text(kimi):
    """A text answer runs in the text stream over blanks in the audio stream; scoring must teacher-force it so."""
    import dataclasses

    import esn_jax

    module, params, _ = kimi
    module = module.clone(config=dataclasses.replace(module.config, text_blank_id=7))
    rng = np.random.default_rng(3)
    audio_ids, text_ids = rng.integers(10, 96, (2, 6)), rng.integers(10, 96, (2, 6))
    labels = [[20, 21, 22], [30]]
    got = esn_jax.score_labels(module, params, {"input_ids": audio_ids, "text_input_ids": text_ids}, labels)
    for j, label in enumerate(labels):
        answer = np.tile(label[:-1], (2, 1)).astype(audio_ids.dtype)
        logits = module.apply({"params": params}, input_ids=np.concatenate([audio_ids, np.full_like(answer, 7)], 1),
                              text_input_ids=np.concatenate([text_ids, answer], 1))
        logp = np.asarray(jax.nn.log_softmax(logits[:, 5:], -1))
        want = sum(logp[:, i, token] for i, token in enumerate(label))
        np.testing.assert_allclose(got[:, j], want, atol=1e-5)
    with pytest.raises(ValueError, match="text_blank_id=151666 is outside the vocabulary"):
        esn_jax.score_labels(kimi[0], params, {"input_ids": audio_ids, "text_input_ids": text_ids}, labels)


WHISPER = dict(num_mel_bins=MEL, d_model=D, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=16,
               decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16, max_source_positions=WIN // 2,
               vocab_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
KIMIA = dict(model_type="kimi_audio", architectures=["MoonshotKimiaForCausalLM"], kimia_mimo_layers=MIMO_LAYERS,
             kimia_mimo_transformer_from_layer_index=MIMO_FROM, kimia_adaptor_input_dim=4 * D,
             kimia_token_offset=64, use_whisper_feature=True)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A random checkpoint directory in the real layout: config.json + model.safetensors (decoder, MIMO
    branch, vq_adaptor) and ``whisper-large-v3/`` written by transformers' own ``save_pretrained`` of a
    WhisperForConditionalGeneration (openai/whisper-large-v3's class: keys ``model.encoder.*``,
    ``model.decoder.*``). Returns the directory, every tensor written (whisper keys under
    ``whisper-large-v3/``) and the torch modules."""
    root = tmp_path_factory.mktemp("kimi") / "hf"
    root.mkdir()
    torch.manual_seed(0)
    text = randomize_(Qwen2ForCausalLM(Qwen2Config(**TEXT)), 10)
    mimo = randomize_(Qwen2ForCausalLM(Qwen2Config(**{**TEXT, "num_hidden_layers": MIMO_LAYERS})), 11)
    adaptor = randomize_(torch.nn.Sequential(torch.nn.Linear(4 * D, 32), torch.nn.SiLU(), torch.nn.Dropout(0.1),
                                             torch.nn.Linear(32, 32), torch.nn.LayerNorm(32, eps=1e-6)), 12)
    whisper = randomize_(WhisperForConditionalGeneration(WhisperConfig(**WHISPER)), 13)
    main = {**text.state_dict(),
            **{k.replace("model.layers.", "model.mimo_layers."): v for k, v in mimo.state_dict().items()
               if k.startswith("model.layers.")},
            "model.mimo_norm.weight": mimo.model.norm.weight, "mimo_output.weight": mimo.lm_head.weight,
            **{f"model.vq_adaptor.layers.{k}": v for k, v in adaptor.state_dict().items()}}
    save_file({k: v.detach().numpy().copy() for k, v in main.items()}, root / "model.safetensors")
    (root / "config.json").write_text(json.dumps({**TEXT, **KIMIA}))
    whisper.save_pretrained(root / "whisper-large-v3")
    whisper_tensors = load_file(root / "whisper-large-v3" / "model.safetensors")
    written = {**load_file(root / "model.safetensors"),
               **{f"whisper-large-v3/{k}": v for k, v in whisper_tensors.items()}}
    return root, written, dict(text=text, adaptor=adaptor.eval(), whisper=whisper.model.encoder.eval())


@pytest.fixture(scope="module")
def converted(hf_checkpoint):
    root, *_ = hf_checkpoint
    ports.convert(root, root.parent / "ours", "kimi_audio")
    return ports.load(root.parent / "ours")


def flat(params):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def test_converted_params_are_the_written_tensors(hf_checkpoint, converted):
    _, written, _ = hf_checkpoint
    module, params = converted
    ours = flat(params)
    used = set()
    for r in rules(module.config):
        got = ours[r.path]
        keys = [r.hf.replace("{layer}", str(i)) for i in range(got.shape[0])] if "{layer}" in r.hf else [r.hf]
        want = np.stack([r.transform(written[k]) for k in keys]) if "{layer}" in r.hf else r.transform(written[keys[0]])
        np.testing.assert_array_equal(got, want, err_msg=r.path)
        used.update(keys)
    assert set(ours) == {r.path for r in rules(module.config)}
    assert sorted(set(written) - used) == sorted(k for k in written if k.startswith("whisper-large-v3/model.decoder."))
    # A few by hand, not through the table: torch Linear [out, in] -> kernel [in, out]; Conv1d [out, in, k] ->
    # [k, in, out]; layer i of a stacked tree is checkpoint layer i.
    np.testing.assert_array_equal(params["mimo_layers"]["self_attn"]["q_proj"]["kernel"][1],
                                  written["model.mimo_layers.1.self_attn.q_proj.weight"].T)
    np.testing.assert_array_equal(params["whisper"]["conv2"]["kernel"],
                                  written["whisper-large-v3/model.encoder.conv2.weight"].transpose(2, 1, 0))
    np.testing.assert_array_equal(params["vq_adaptor"]["layers_4"]["scale"],
                                  written["model.vq_adaptor.layers.4.weight"])
    assert params["whisper"]["layers"]["fc1"]["kernel"].shape[0] == 2


def test_converted_forward_matches_the_torch_modules(hf_checkpoint, converted):
    """The whole input mixing and the text head against the torch parts the checkpoint was written from:
    ((embed(ids) + adaptor(stack4(whisper(feats)))) * sqrt(2) at audio positions + embed(text_ids)) -> Qwen2."""
    _, _, ref = hf_checkpoint
    module, params = converted
    feats = np.random.default_rng(4).normal(size=(1, MEL, WIN)).astype(np.float32)
    fmask = (np.arange(WIN)[None] < 16).astype(np.int32)  # 16 frames: 2 tokens
    ids = np.array([[5, 6, 7, 8, 9, 4]])
    text_ids = np.array([[10, 11, 12, 12, 13, 14]])
    cont = np.array([[0, 0, 1, 1, 0, 0]], bool)
    with torch.no_grad():
        embed = ref["text"].model.embed_tokens
        enc = ref["whisper"](torch.from_numpy(feats)).last_hidden_state.reshape(1, WIN // 8, 4 * D)[:, :2]
        audio = embed(torch.from_numpy(ids))
        audio[:, 2:4] = (audio[:, 2:4] + ref["adaptor"](enc)) * 2 ** 0.5
        want = ref["text"](inputs_embeds=audio + embed(torch.from_numpy(text_ids))).logits.numpy()
    got = module.apply({"params": params}, input_ids=jnp.asarray(ids), text_input_ids=jnp.asarray(text_ids),
                       whisper_input_features=jnp.asarray(feats), is_continuous_mask=jnp.asarray(cont),
                       whisper_input_mask=jnp.asarray(fmask))
    assert got.shape == (1, 6, TEXT["vocab_size"])
    diff = max_abs_diff(got, want)
    print(f"kimi_audio converted checkpoint: max |dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_command_line_converts_the_same(hf_checkpoint, converted, tmp_path):
    root, *_ = hf_checkpoint
    run = subprocess.run([sys.executable, "-m", "experiments.convert", "--model=kimi_audio", f"--hf_dir={root}",
                          f"--out={tmp_path / 'cli'}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    module, params = ports.load(tmp_path / "cli")
    assert module.config == converted[0].config
    jax.tree.map(np.testing.assert_array_equal, params, converted[1])


def test_missing_whisper_folder_is_named(hf_checkpoint, tmp_path):
    root, *_ = hf_checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / name, bad / name)
    with pytest.raises(FileNotFoundError, match=r"lacks the sub-checkpoint folders \['whisper-large-v3'\]"):
        ports.convert(bad, tmp_path / "out", "kimi_audio")
    (bad / "whisper-large-v3").mkdir()
    shutil.copy(root / "whisper-large-v3" / "config.json", bad / "whisper-large-v3" / "config.json")
    with pytest.raises(ports.CheckpointFileError, match=r"whisper-large-v3 has neither model.safetensors"):
        ports.convert(bad, tmp_path / "out", "kimi_audio")
    assert not (tmp_path / "out").exists()


def test_7b_config_builds_abstractly_with_the_documented_parameter_count():
    """Independent count: transformers' Qwen2ForCausalLM (decoder + lm_head) and WhisperEncoder on the meta
    device, the MIMO branch as Qwen2 decoder layers + RMSNorm + a bias-free head, vq_adaptor as torch layers."""
    hf = json.loads((FIXTURES / "kimi_audio_7b.config.json").read_text())
    whisper_hf = json.loads((FIXTURES / "whisper_large_v3.config.json").read_text())
    config = KimiAudioConfig.from_hf(hf, whisper_hf)
    _, abstract = abstract_params("kimi_audio", config, jnp.bfloat16)
    text_cfg = Qwen2Config(**{k: v for k, v in hf.items() if not k.startswith("kimia_") and k != "model_type"})
    hidden, vocab = hf["hidden_size"], hf["vocab_size"]
    with torch.device("meta"):
        mimo_layer = sum(p.numel() for p in Qwen2DecoderLayer(text_cfg, 0).parameters())
        adaptor = sum(p.numel() for p in torch.nn.Sequential(
            torch.nn.Linear(5120, hidden), torch.nn.Linear(hidden, hidden), torch.nn.LayerNorm(hidden)).parameters())
    want = (sum(hf_param_count(Qwen2ForCausalLM, text_cfg).values()) + 6 * mimo_layer + hidden + vocab * hidden
            + adaptor + sum(hf_param_count(WhisperEncoder, WhisperConfig(**whisper_hf)).values()))
    assert count_params(abstract) == want
    assert (config.mimo_layers, config.mimo_from_layer, config.whisper.window_frames) == (6, 21, 3000)


def small_hf(**changes):
    """A small Kimi-Audio config.json dict (the hf_checkpoint's) with ``changes``; None values are dropped."""
    hf = {**{k: v for k, v in TEXT.items() if k != "rope_parameters"}, **KIMIA, **changes}
    return {k: v for k, v in hf.items() if v is not None}


WHISPER_HF = {**WHISPER, "model_type": "whisper"}  # what WhisperConfig.save_pretrained writes


def test_rope_theta_defaults_to_the_remote_configs_10000():
    """The remote config class defaults rope_theta to 10000 (as transformers' Qwen2Config); a stated theta wins."""
    assert KimiAudioConfig.from_hf(small_hf(), WHISPER_HF).text.rope_theta == 10000.0
    assert KimiAudioConfig.from_hf(small_hf(rope_theta=1e6), WHISPER_HF).text.rope_theta == 1e6
    assert KimiAudioConfig.from_hf(small_hf(rope_theta=5e5, rope_scaling=None), WHISPER_HF).text.rope_theta == 5e5
    params = {"rope_type": "default", "rope_theta": 1e6}
    assert KimiAudioConfig.from_hf(small_hf(rope_parameters=params), WHISPER_HF).text.rope_theta == 1e6


def test_token_offset_is_read_and_old_port_json_still_loads():
    config = KimiAudioConfig.from_hf(small_hf(), WHISPER_HF)
    assert config.token_offset == 64  # KIMIA's kimia_token_offset
    assert KimiAudioConfig.from_hf(small_hf(kimia_token_offset=None), WHISPER_HF).token_offset == 152064
    real = json.loads((FIXTURES / "kimi_audio_7b.config.json").read_text())
    whisper_hf = json.loads((FIXTURES / "whisper_large_v3.config.json").read_text())
    released = KimiAudioConfig.from_hf(real, whisper_hf)
    assert (released.token_offset, released.text.rope_theta) == (152064, 1e6)
    stored = config.to_dict()
    assert KimiAudioConfig.from_dict(stored) == config
    del stored["token_offset"]  # a port.json written before the field
    old = KimiAudioConfig.from_dict(stored)
    assert old.token_offset == 152064 and old == dataclasses.replace(config, token_offset=152064)
