"""Qwen2.5-Omni thinker port vs transformers' Qwen2_5OmniThinkerForConditionalGeneration (tiny, float32)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

import ports
from ports.audio import output_lengths
from ports.config import UnsupportedConfigError
from ports.models import abstract_params
from ports.qwen2_5_omni import Qwen2_5OmniConfig
from ports.safetensors_np import SafetensorsCheckpoint
from tests.ports.hf_fixtures import randomize_
from tests.ports.lalm_helpers import FIXTURES, count_params, hf_param_count, max_abs_diff

AUDIO_ID, BOS, EOS, PAD = 150, 153, 154, 0
MEL, CHUNK = 16, 8  # n_window=4: 8-frame chunks stand in for the real 200-frame ones
TEXT = dict(vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]})
AUDIO = dict(num_mel_bins=MEL, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
             output_dim=32, n_window=CHUNK // 2, max_source_positions=64)
VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
              fullatt_block_indexes=[0])
TOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(torch thinker, our module, our params) through save_pretrained -> ports.convert -> ports.load."""
    root = tmp_path_factory.mktemp("omni")
    torch.manual_seed(0)
    cfg = Qwen2_5OmniThinkerConfig(audio_config=AUDIO, text_config=TEXT, vision_config=VISION,
                                   audio_token_index=AUDIO_ID, audio_start_token_id=BOS, audio_end_token_id=EOS,
                                   image_token_index=151, video_token_index=152, tie_word_embeddings=False,
                                   vision_start_token_id=155)  # get_rope_index reads it; the hub config has it
    hf = randomize_(Qwen2_5OmniThinkerForConditionalGeneration(cfg))
    hf.save_pretrained(root / "hf")
    ports.convert(root / "hf", root / "ours", "qwen2_5_omni")
    module, params = ports.load(root / "ours")
    return hf, module, params, root


def clips(frames, seed=0):
    """Right-padded features [C, M, F] and frame mask [C, F] for clips of ``frames`` mel frames."""
    f = max(frames)
    feats = np.random.default_rng(seed).normal(size=(len(frames), MEL, f)).astype(np.float32)
    mask = (np.arange(f)[None] < np.array(frames)[:, None]).astype(np.int32)
    return feats, mask


def prompts(n_audio, pre=(5, 6, 7), post=(8, 9, 10, 11)):
    """Left-padded prompts text <|audio_bos|> <|AUDIO|>*n <|audio_eos|> text, one per clip."""
    rows = [[*pre, BOS, *[AUDIO_ID] * n, EOS, *post[: 1 + i % len(post)]] for i, n in enumerate(n_audio)]
    t = max(map(len, rows))
    ids = np.array([[PAD] * (t - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (t - len(r)) + [1] * len(r) for r in rows], np.int32)
    return ids, mask


def hf_logits(hf, ids, mask, feats, fmask):
    with torch.no_grad():
        return hf(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                  input_features=torch.as_tensor(feats), feature_attention_mask=torch.as_tensor(fmask)).logits.numpy()


@pytest.mark.parametrize("frames", [[21], [21, 8, 13], [16, 3, 37]],
                         ids=["one-clip-partial-chunk", "batch-3-lengths", "batch-exact-chunks-and-min-clip"])
def test_logits_match_transformers(converted, frames):
    """Clips over several chunks with a partial last chunk, exact chunk multiples, batches of different
    lengths, left-padded prompts: logits at every real position within 1e-4."""
    hf, module, params, _ = converted
    feats, fmask = clips(frames)
    ids, mask = prompts([int(output_lengths(n)) for n in frames])
    want = hf_logits(hf, ids, mask, feats, fmask)
    got = np.asarray(module.apply({"params": params}, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats),
                                  feature_attention_mask=jnp.asarray(fmask), attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    diff = max_abs_diff(got[real], want[real])
    print(f"qwen2_5_omni {frames}: max |dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_embed_inputs_then_inputs_embeds_is_the_same_forward_and_sites_work(converted):
    _, module, params, _ = converted
    feats, fmask = clips([21, 13])
    ids, mask = prompts([int(output_lengths(n)) for n in (21, 13)])
    variables = {"params": params}
    embeds = module.apply(variables, jnp.asarray(ids), jnp.asarray(feats), jnp.asarray(fmask),
                          method=module.embed_inputs)
    full = module.apply(variables, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats),
                        feature_attention_mask=jnp.asarray(fmask), attention_mask=jnp.asarray(mask))
    fast, state = module.apply(variables, inputs_embeds=embeds, attention_mask=jnp.asarray(mask),
                               capture_intermediates=ports.capture_filter("gate_act"), mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(full), np.asarray(fast))
    cfg = module.config.text
    assert ports.collect(state["intermediates"])["gate_act"].shape == (cfg.num_hidden_layers, *ids.shape,
                                                                       cfg.intermediate_size)
    # Ablating neuron 3 of layer 1 at the mlp_in site == zeroing row 3 of that layer's down_proj kernel.
    scale = jnp.ones((cfg.num_hidden_layers, cfg.intermediate_size)).at[1, 3].set(0.0)
    edited = module.apply(variables, inputs_embeds=embeds, attention_mask=jnp.asarray(mask),
                          interventions={"mlp_in": {"scale": scale}})
    kernel = jnp.asarray(params["language_model"]["model"]["layers"]["mlp"]["down_proj"]["kernel"])
    oracle_params = jax.tree.map(lambda x: x, params)
    oracle_params["language_model"]["model"]["layers"]["mlp"]["down_proj"]["kernel"] = kernel.at[1, 3].set(0.0)
    oracle = module.apply({"params": oracle_params}, inputs_embeds=embeds, attention_mask=jnp.asarray(mask))
    assert max_abs_diff(edited, oracle) < 1e-5 and max_abs_diff(edited, fast) > 1e-4


def test_hub_layout_converts_to_the_same_parameters(converted, tmp_path):
    """The hub checkpoint: thinker.* keys plus talker.*, token2wav.*, thinker.visual.* (skipped)."""
    hf, _, params, root = converted
    src = SafetensorsCheckpoint(root / "hf")
    tensors = {f"thinker.{k}": src.read(k) for k in src.keys()}  # noqa: SIM118 (a checkpoint, not a dict)
    tensors |= {"talker.model.layers.0.mlp.up_proj.weight": np.ones((2, 2), np.float32),
                "token2wav.code_embedding.weight": np.ones((2, 2), np.float32)}
    (tmp_path / "hub").mkdir()
    save_file(tensors, tmp_path / "hub" / "model.safetensors")
    thinker = json.loads((root / "hf" / "config.json").read_text())
    full = {"model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniModel"], "thinker_config": thinker,
            "talker_config": {}, "token2wav_config": {}, "enable_audio_output": True}
    (tmp_path / "hub" / "config.json").write_text(json.dumps(full))
    ports.convert(tmp_path / "hub", tmp_path / "ours", "qwen2_5_omni")
    module, hub_params = ports.load(tmp_path / "ours")
    assert module.config.hf_prefix == "thinker."
    assert jax.tree.structure(hub_params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(hub_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_inputs_are_named(converted):
    _, module, params, _ = converted
    variables = {"params": params}
    feats, fmask = clips([21, 13])
    ids, mask = prompts([int(output_lengths(21)) + 1, int(output_lengths(13))])
    with pytest.raises(ValueError, match=r"<\|AUDIO\|> placeholders \(\[6, 3\] per prompt\).*\(\[5, 3\] per row"):
        module.apply(variables, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats),
                     feature_attention_mask=jnp.asarray(fmask), attention_mask=jnp.asarray(mask))
    empty = fmask.copy()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"clips \[1\] have \[0\] valid mel frames"):
        module.apply(variables, input_ids=jnp.asarray(ids), input_features=jnp.asarray(feats),
                     feature_attention_mask=jnp.asarray(empty), attention_mask=jnp.asarray(mask))
    with pytest.raises(ValueError, match="no input_features"):
        module.apply(variables, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask))


def test_config_refuses_what_it_does_not_implement(converted):
    *_, root = converted
    cfg = json.loads((root / "hf" / "config.json").read_text())
    with pytest.raises(UnsupportedConfigError, match="expects 'qwen2_5_omni'"):
        Qwen2_5OmniConfig.from_hf({**cfg, "model_type": "audioflamingo3"})
    with pytest.raises(UnsupportedConfigError, match="'new_switch'"):
        Qwen2_5OmniConfig.from_hf({**cfg, "new_switch": 1})
    with pytest.raises(UnsupportedConfigError, match="'conv_bias'"):
        Qwen2_5OmniConfig.from_hf({**cfg, "audio_config": {**cfg["audio_config"], "conv_bias": False}})
    config = Qwen2_5OmniConfig.from_hf(cfg)
    assert Qwen2_5OmniConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_7b_config_builds_abstractly_with_the_transformers_parameter_count():
    """Thinker without vision; transformers also stores audio_bos_eos_token [2, 3584], which no forward
    pass reads and the port leaves out."""
    hf_cfg = json.loads((FIXTURES / "qwen2_5_omni_7b.config.json").read_text())
    config = Qwen2_5OmniConfig.from_hf(hf_cfg)
    _, abstract = abstract_params("qwen2_5_omni", config, jnp.bfloat16)
    from transformers import Qwen2_5OmniConfig as HFConfig

    counts = hf_param_count(Qwen2_5OmniThinkerForConditionalGeneration, HFConfig(**hf_cfg).thinker_config)
    expected = sum(n for k, n in counts.items() if not k.startswith("model.visual."))
    assert counts["model.audio_tower.audio_bos_eos_token.weight"] == 2 * 3584
    assert count_params(abstract) == expected - 2 * 3584
    assert config.text.num_hidden_layers == 28 and config.audio.chunk_frames == 200
