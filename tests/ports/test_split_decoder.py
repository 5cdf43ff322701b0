"""The decoder split where edits begin (ports.split_decoder) against the whole forward of the same decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ports
from ports import split_decoder
from ports.decoder import prefix_cache

CONFIG = ports.DecoderConfig(vocab_size=40, hidden_size=16, intermediate_size=20, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=4)


@pytest.fixture(scope="module")
def model():
    jax.config.update("jax_default_matmul_precision", "highest")
    module = ports.Qwen2ForCausalLM(CONFIG)
    params = module.init(jax.random.key(1), np.zeros((1, 3), np.int32))["params"]
    return module, params


def inputs(rows: int, tokens: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, tokens), np.int32)
    mask[0, :2] = 0  # a left-padded row
    return {"inputs_embeds": rng.standard_normal((rows, tokens, CONFIG.hidden_size)).astype(np.float32),
            "attention_mask": mask}


def edits_from(layer: int, seed: int, per_position: bool = False) -> dict:
    """Random gate_act scales and mlp_in shifts on layers >= ``layer`` (identity below)."""
    rng = np.random.default_rng(seed)
    shape = (CONFIG.num_hidden_layers, 3, 6, CONFIG.intermediate_size) if per_position else (
        CONFIG.num_hidden_layers, CONFIG.intermediate_size)
    scale, shift = rng.uniform(0, 3, shape).astype(np.float32), rng.normal(0, 1, shape).astype(np.float32)
    scale[:layer], shift[:layer] = 1.0, 0.0
    return {"gate_act": {"scale": scale}, "mlp_in": {"shift": shift}}


def split_logits(module, params, kw, head, cut, positions, edits):
    state = split_decoder.below(module, params, kw, head, cut, positions)
    h = split_decoder.above(module, params, state, edits, cut, positions)
    return module.apply({"params": params}, h, method="logits")


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
@pytest.mark.parametrize("per_position", [False, True])
def test_split_equals_the_whole_forward(model, cut, per_position):
    module, params = model
    kw = inputs(3, 6)
    positions = jnp.asarray([[5, 2], [5, 5], [0, 3]], jnp.int32)
    edits = edits_from(cut, seed=cut, per_position=per_position)
    want = module.apply({"params": params}, **kw, interventions=edits, logits_positions=positions)
    got = split_logits(module, params, kw, None, cut, positions, edits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
    if cut:  # the edits reach the logits: an unedited forward differs
        clean = module.apply({"params": params}, **kw, logits_positions=positions)
        assert np.abs(np.asarray(clean) - np.asarray(want)).max() > 1e-3


@pytest.mark.parametrize("cut", [0, 2, 3])
def test_a_shared_prefix_runs_beside_the_rows(model, cut):
    """Rows after a shared prefix (one row [1, P]) score as the whole forward given the prefix's own cache."""
    module, params = model
    head = {"inputs_embeds": np.random.default_rng(5).standard_normal((1, 4, CONFIG.hidden_size)).astype(np.float32)}
    kw = inputs(3, 6, seed=1)
    positions = jnp.full((3, 1), 5, jnp.int32)
    edits = edits_from(cut, seed=7)
    _, state = module.apply({"params": params}, **head, interventions=edits, mutable=["cache"])
    want = module.apply({"params": params}, **kw, interventions=edits, logits_positions=positions,
                        prefix=prefix_cache(state))
    got = split_logits(module, params, kw, head, cut, positions, edits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_a_one_layer_decoder_splits_at_its_only_layer():
    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = ports.DecoderConfig(vocab_size=40, hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    module = ports.Qwen2ForCausalLM(cfg)
    params = module.init(jax.random.key(2), np.zeros((1, 3), np.int32))["params"]
    kw = inputs(3, 6, seed=2)
    positions = jnp.full((3, 1), 5, jnp.int32)
    edits = {"gate_act": {"scale": np.full((1, cfg.intermediate_size), 3.0, np.float32)}}
    want = module.apply({"params": params}, **kw, interventions=edits, logits_positions=positions)
    got = split_logits(module, params, kw, None, 0, positions, edits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
