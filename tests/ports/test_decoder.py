"""The Flax decoder against transformers' Qwen2ForCausalLM and LlamaForCausalLM, through save_pretrained ->
convert -> load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2Config
from transformers import Qwen2ForCausalLM as TorchQwen2

import ports
from ports.decoder import prefix_cache
from ports.models import abstract_params
from tests.ports import hf_fixtures

CONFIGS = {
    "mha_tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mqa_untied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False),
    "odd_sizes": dict(vocab_size=101, hidden_size=30, intermediate_size=37, num_hidden_layers=3,
                      num_attention_heads=5, num_key_value_heads=1, rope_parameters={
                          "rope_type": "default", "rope_theta": 1e6}),
    "explicit_head_dim": dict(hidden_size=24, head_dim=10, num_attention_heads=3, num_key_value_heads=3),
}
# Llama: the same shapes without q/k/v biases (its default), plus one with them.
LLAMA_CONFIGS = {**CONFIGS, "gqa_bias": dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True)}
CASES = [("qwen2", name) for name in sorted(CONFIGS)] + [("llama", name) for name in sorted(LLAMA_CONFIGS)]


def padded_batch(vocab, padding_side, seed=0):
    """Four rows of lengths 9, 6, 4, 9 padded to 9 on ``padding_side``; positions as if unpadded."""
    rng = np.random.RandomState(seed)
    lengths = [9, 6, 4, 9]
    ids = rng.randint(0, vocab, (len(lengths), 9))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        if padding_side == "left":
            mask[row, 9 - n:] = 1
        else:
            mask[row, :n] = 1
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    return ids, mask, positions


@pytest.mark.parametrize("family, name", CASES)
@pytest.mark.parametrize("shard", [None, "30KB"])
def test_parity_with_transformers(tmp_path, family, name, shard):
    config = (CONFIGS if family == "qwen2" else LLAMA_CONFIGS)[name]
    torch_model = hf_fixtures.causal_lm(tmp_path / "hf", family, max_shard_size=shard, **config)
    if shard:
        assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ports.convert(tmp_path / "hf", tmp_path / "jax", family)
    module, params = ports.load(tmp_path / "jax")
    assert module.config.attention_bias == (family == "qwen2" or config.get("attention_bias", False))
    assert ("bias" in params["model"]["layers"]["self_attn"]["q_proj"]) == module.config.attention_bias
    vocab = torch_model.config.vocab_size
    for side in ("left", "right"):
        ids, mask, positions = padded_batch(vocab, side)
        ref = hf_fixtures.torch_logits(torch_model, ids, mask, positions)
        ours = np.asarray(jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask))
        real = mask.astype(bool)
        assert np.abs(ours - ref)[real].max() <= 1e-4, side
        np.testing.assert_array_equal(ours.argmax(-1)[real], ref.argmax(-1)[real])


@pytest.fixture(scope="module")
def tiny():
    cfg = ports.DecoderConfig(vocab_size=53, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=6, rope_theta=1e4)
    module = ports.Qwen2ForCausalLM(cfg)
    ids = np.random.RandomState(1).randint(0, 53, (3, 7))
    params = module.init(jax.random.key(0), ids)["params"]
    # Random norms so that no test passes by accident of all-ones weights.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.3 * jax.random.normal(jax.random.key(len(p)), x.shape) if "scale" in str(p[-1]) else x,
        params)
    return module, params, ids


def test_padding_does_not_change_a_row(tiny):
    module, params, ids = tiny
    alone = module.apply({"params": params}, input_ids=ids[:1, 3:])
    padded_ids = ids[:1].copy()
    padded_ids[:, :3] = 0
    mask = np.array([[0, 0, 0, 1, 1, 1, 1]])
    padded = module.apply({"params": params}, input_ids=padded_ids, attention_mask=mask)
    np.testing.assert_allclose(padded[:, 3:], alone, atol=1e-5)


def test_inputs_embeds_and_logits_positions(tiny):
    module, params, ids = tiny
    full = module.apply({"params": params}, input_ids=ids)
    embeds = module.apply({"params": params}, ids, method="embed_inputs")
    assert embeds.shape == (3, 7, 24)
    np.testing.assert_array_equal(module.apply({"params": params}, inputs_embeds=embeds), full)
    where = np.array([[6], [2], [0]])
    picked = module.apply({"params": params}, input_ids=ids, logits_positions=where)
    np.testing.assert_allclose(picked, np.take_along_axis(np.asarray(full), where[..., None], 1), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        module.apply({"params": params})


def _edited_down_proj(params, layer, rows, factor):
    kernel = params["model"]["layers"]["mlp"]["down_proj"]["kernel"]
    new = kernel.at[layer, rows].multiply(factor)
    return jax.tree_util.tree_map_with_path(lambda p, x: new if "down_proj" in str(p) else x, params)


@pytest.mark.parametrize("site", ports.SITES)
@pytest.mark.parametrize("factor", [0.0, 2.5, -0.5])
def test_site_scale_equals_down_proj_row_edit(tiny, site, factor):
    """DESIGN §2's oracle: scaling neuron n at a site == scaling row n of that layer's down_proj kernel."""
    module, params, ids = tiny
    layer, rows = 1, np.array([0, 7, 39])
    scale = np.ones((3, 40), np.float32)
    scale[layer, rows] = factor
    edited = module.apply({"params": params}, input_ids=ids, interventions={site: {"scale": scale}})
    oracle = module.apply({"params": _edited_down_proj(params, layer, rows, factor)}, input_ids=ids)
    np.testing.assert_allclose(edited, oracle, atol=2e-5)
    assert np.abs(edited - module.apply({"params": params}, input_ids=ids)).max() > 1e-3


def test_position_scoped_edit(tiny):
    """A [L, B, T, I] scale edits only the chosen positions: earlier positions are untouched."""
    module, params, ids = tiny
    scale = np.ones((3, 3, 7, 40), np.float32)
    scale[:, :, 4:, :5] = 0.0
    clean = module.apply({"params": params}, input_ids=ids)
    edited = module.apply({"params": params}, input_ids=ids, interventions={"gate_act": {"scale": scale}})
    np.testing.assert_array_equal(edited[:, :4], clean[:, :4])
    assert np.abs(edited[:, 4:] - clean[:, 4:]).max() > 1e-3


def test_absent_interventions_add_no_computation(tiny):
    module, params, ids = tiny

    def run(interventions):
        return module.apply({"params": params}, input_ids=ids, interventions=interventions)

    none, empty = jax.make_jaxpr(run)(None), jax.make_jaxpr(run)({})
    assert str(none) == str(empty)
    ones = {"gate_act": {"scale": jnp.ones((3, 40))}}
    assert str(jax.make_jaxpr(run)(ones)).count(" mul ") > str(none).count(" mul ")
    np.testing.assert_array_equal(run(None), run(ones))


def test_capture_returns_exactly_the_sites(tiny):
    module, params, ids = tiny
    _, state = module.apply({"params": params}, input_ids=ids, capture_intermediates=ports.capture_filter())
    leaves = jax.tree_util.tree_leaves_with_path(state["intermediates"])
    assert sorted(str(p[-3].key) for p, _ in leaves) == ["gate_act", "mlp_in"]
    sites = ports.collect(state["intermediates"])
    assert {k: v.shape for k, v in sites.items()} == {"gate_act": (3, 3, 7, 40), "mlp_in": (3, 3, 7, 40)}
    # gate_act is silu(gate_proj x) computed independently from the captured norm input of layer 0.
    x = module.apply({"params": params}, ids, method="embed_inputs")
    layer0 = jax.tree.map(lambda a: a[0], params["model"]["layers"])
    h = np.asarray(x, np.float64)
    w = np.asarray(layer0["post_attention_layernorm"]["scale"])
    _, st = module.apply({"params": params}, input_ids=ids, capture_intermediates=lambda m, n: m.name == "self_attn")
    h = h + np.asarray(st["intermediates"]["model"]["layers"]["self_attn"]["__call__"][0][0])
    normed = w * h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-6)
    pre = normed @ np.asarray(layer0["mlp"]["gate_proj"]["kernel"])
    np.testing.assert_allclose(sites["gate_act"][0], pre / (1 + np.exp(-pre)), atol=1e-5)


def test_bad_interventions_are_named(tiny):
    module, params, ids = tiny
    with pytest.raises(ValueError, match=r"unknown site 'gate'.*gate_act\.scale has shape \(2, 40\)"):
        module.apply({"params": params}, input_ids=ids,
                     interventions={"gate": {"scale": np.ones((3, 40))}, "gate_act": {"scale": np.ones((2, 40))}})
    with pytest.raises(ValueError, match="unknown edit 'bias'"):
        module.apply({"params": params}, input_ids=ids, interventions={"mlp_in": {"bias": np.ones((3, 40))}})


def test_prefix_cache_continues_the_rows(tiny):
    """A call on the rest of each row with the prefix's cache == the full rows (shared prefix of 3 tokens)."""
    module, params, ids = tiny
    full_ids = ids.copy()
    full_ids[:, :3] = ids[0, :3]
    mask = np.array([[1] * 7, [1] * 7, [1, 1, 1, 0, 0, 1, 1]])  # row 2's rest is left-padded by 2
    scale = np.random.default_rng(0).uniform(0, 2, (3, 40)).astype(np.float32)
    edits = {"gate_act": {"scale": scale}}
    full = module.apply({"params": params}, input_ids=full_ids, interventions=edits)
    _, state = module.apply({"params": params}, input_ids=full_ids[:1, :3], interventions=edits, mutable=["cache"])
    cache = prefix_cache(state)
    assert cache["key"].shape == (3, 1, 3, 2, 6)
    rest = module.apply({"params": params}, input_ids=full_ids[:, 3:], attention_mask=mask[:, 3:],
                        interventions=edits, prefix=cache)
    np.testing.assert_allclose(rest[:2], full[:2, 3:], atol=2e-5)
    alone = module.apply({"params": params}, input_ids=np.r_[full_ids[2, :3], full_ids[2, 5:]][None],
                         interventions=edits)
    np.testing.assert_allclose(rest[2, 2:], alone[0, 3:], atol=2e-5)


def test_a_visibility_mask_needs_positions(tiny):
    module, params, ids = tiny
    with pytest.raises(ValueError, match=r"\[B, T, T\] attention_mask needs position_ids"):
        module.apply({"params": params}, input_ids=ids, attention_mask=np.ones((*ids.shape, ids.shape[1]), bool))


def test_bad_prefix_is_named(tiny):
    module, params, ids = tiny
    good = {"key": np.zeros((3, 1, 2, 2, 6), np.float32), "value": np.zeros((3, 1, 2, 2, 6), np.float32)}
    with pytest.raises(ValueError, match=r"\(L, K, D\) = \(3, 2, 6\) and B = 3; got key \(3, 2, 2, 2, 6\)"):
        module.apply({"params": params}, input_ids=ids, prefix={**good, "key": np.zeros((3, 2, 2, 2, 6))})
    with pytest.raises(ValueError, match="'key' and 'value'"):
        module.apply({"params": params}, input_ids=ids, prefix={"key": good["key"]})
    with pytest.raises(ValueError, match=r"prefix mask must be \[1 or B, P\] = \[1 or 3, 2\]; got \(3, 5\)"):
        module.apply({"params": params}, input_ids=ids, prefix={**good, "mask": np.ones((3, 5), bool)})


def test_7b_parameter_count_matches_transformers():
    hf = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
              rope_theta=1e6, tie_word_embeddings=False, hidden_act="silu")
    _, abstract = abstract_params("qwen2", ports.DecoderConfig.from_hf(hf), jnp.bfloat16)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    with torch.device("meta"):
        theirs = sum(p.numel() for p in TorchQwen2(Qwen2Config(**{k: v for k, v in hf.items()
                                                                  if k != "model_type"})).parameters())
    assert ours == theirs
