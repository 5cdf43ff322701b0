"""Sharded runs on 8 CPU devices give the numbers of one device: forward, statistics, mask sweeps, loading."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import esn_jax
import ports
from esn_jax import prefix, scoring
from ports import sharding
from ports.qwen2_5_omni import Qwen2_5OmniConfig
from tests.ports import hf_fixtures
from tests.ports.lalm_helpers import FIXTURES

MESHES = [dict(data=8), dict(data=2, model=4), dict(variants=2, data=2, model=2)]
LABELS = [[3], [5], [7], [11]]


@pytest.fixture(scope="module")
def tiny():
    cfg = ports.DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=1e4)
    module = ports.Qwen2ForCausalLM(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (8, 10)).astype(np.int32)
    mask = (np.arange(10)[None] >= rng.integers(0, 5, (8, 1))).astype(np.int32)
    params = module.init(jax.random.key(0), ids)["params"]
    params = jax.tree.map(lambda x: x * 3.0, params)  # larger weights: more varied predictions and activations
    return module, params, {"input_ids": ids * mask, "attention_mask": mask}, rng.integers(0, 4, 8)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: ",".join(f"{k}:{v}" for k, v in s.items()))
def test_sharded_equals_one_device(tiny, shape):
    module, params, batch, labels = tiny
    mesh = sharding.make_mesh(**shape)
    sharded_params, sharded_batch = sharding.shard_params(params, mesh), sharding.shard_batch(batch, mesh)
    down = sharded_params["model"]["layers"]["mlp"]["down_proj"]["kernel"]
    assert down.sharding.spec == P(None, "model", None)
    assert {s.data.shape[1] for s in down.addressable_shards} == {64 // shape.get("model", 1)}
    assert sharded_batch["input_ids"].sharding.spec == P("data")

    forward = jax.jit(lambda p, b: module.apply({"params": p}, **b))
    np.testing.assert_allclose(forward(sharded_params, sharded_batch), forward(params, batch), rtol=1e-5, atol=1e-4)

    config = esn_jax.StatsConfig(success_filter=False)
    zeros = esn_jax.EmotionStats.zeros(4, 2, 64, config)
    one, _ = esn_jax.update_stats(zeros, module, params, batch, labels, LABELS, config)
    many, _ = esn_jax.update_stats(zeros, module, sharded_params, sharded_batch, labels, LABELS, config)
    np.testing.assert_array_equal(many.count_pos, one.count_pos)
    np.testing.assert_allclose(many.sum, one.sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(many.sum_sq, one.sum_sq, rtol=1e-5, atol=1e-5)

    masks = esn_jax.select(one, "lap", 6)
    variants = esn_jax.stack([esn_jax.ablate(masks), esn_jax.gain(masks, 3.0)])
    variants = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), variants)  # [2E=8, L, I]
    want = esn_jax.score_variants(module, params, batch, variants, LABELS)
    got = esn_jax.score_variants(module, sharded_params, sharded_batch, sharding.shard_variants(variants, mesh),
                                 LABELS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_load_restores_straight_into_shards(tmp_path):
    torch_model = hf_fixtures.causal_lm(tmp_path / "hf", intermediate_size=64, vocab_size=64)
    ports.convert(tmp_path / "hf", tmp_path / "jax", "qwen2")
    mesh = sharding.make_mesh(data=2, model=4)
    module, params = ports.load(tmp_path / "jax", mesh=mesh)
    gate = params["model"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert gate.sharding.spec == P(None, None, "model")
    assert {s.data.shape for s in gate.addressable_shards} == {(2, 32, 16)}
    ids = np.arange(16).reshape(2, 8) % 64
    ref = hf_fixtures.torch_logits(torch_model, ids, np.ones_like(ids), np.tile(np.arange(8), (2, 1)))
    np.testing.assert_allclose(module.apply({"params": params}, input_ids=ids), ref, atol=1e-4)


def test_rules_split_every_large_matrix_of_a_7b_model():

    hf = json.loads((FIXTURES / "qwen2_5_omni_7b.config.json").read_text())
    _, abstract = ports.models.abstract_params("qwen2_5_omni", Qwen2_5OmniConfig.from_hf(hf), np.float32)
    mesh = sharding.make_mesh(model=8)
    shardings = sharding.param_shardings(abstract, mesh)
    flat = jax.tree_util.tree_leaves_with_path(abstract)
    specs = jax.tree.leaves(shardings)
    unsplit = [jax.tree_util.keystr(p) for (p, x), s in zip(flat, specs, strict=True)
               if x.size > 4_000_000 and "model" not in s.spec]
    assert unsplit == []
    total = sum(x.size * 4 for x in jax.tree.leaves(abstract))
    per_device = sharding.bytes_per_device(abstract, shardings)
    assert total / 8 <= per_device < total / 6  # the replicated norms, biases and convs are small


def test_bad_meshes():
    assert sharding.parse_mesh("data:4,model:2") == {"data": 4, "model": 2}
    assert sharding.parse_mesh("") == {}
    with pytest.raises(ValueError, match="bad mesh entry 'batch:4'"):
        sharding.parse_mesh("batch:4")
    with pytest.raises(ValueError, match="needs 16 devices; 8 available"):
        sharding.make_mesh(data=4, model=4)


@pytest.mark.parametrize("shape", MESHES[1:], ids=lambda s: ",".join(f"{k}:{v}" for k, v in s.items()))
def test_sharded_sweep_with_a_shared_prefix(tiny, shape):
    """The prompt prefix all rows share, run once per variant on a mesh == the full rows on one device."""
    module, params, batch, _ = tiny
    ids, mask = batch["input_ids"].copy(), batch["attention_mask"]
    np.put_along_axis(ids, mask.argmax(1)[:, None] + np.arange(3), [7, 8, 9], axis=1)
    batch = {"input_ids": ids, "attention_mask": mask}
    mesh = sharding.make_mesh(**shape)
    sharded_params, sharded_batch = sharding.shard_params(params, mesh), sharding.shard_batch(batch, mesh)
    assert prefix.shared_length(jax.jit(scoring.embed, static_argnums=0)(module, sharded_params, sharded_batch)) == 3
    masks = np.random.default_rng(1).random((4, 2, 64)) < 0.1
    variants = esn_jax.gain(masks, 2.0)
    want = esn_jax.score_variants(module, params, batch, variants, LABELS, share_prefix=False)
    got = esn_jax.score_variants(module, sharded_params, sharded_batch, sharding.shard_variants(variants, mesh),
                                 LABELS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
