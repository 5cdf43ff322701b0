"""The memory plan's pieces against direct measurements (tests run with 8 CPU devices: tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ports
from experiments import memory as memory_plan
from ports import sharding

TINY = ports.DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def design_tokens(frames: int) -> int:
    """DESIGN §3: N = ((T − 1) // 2 + 1 − 2) // 2 + 1 audio tokens for T mel frames."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def test_sequence_lengths_follow_the_token_rates():
    assert memory_plan.sequence_length("qwen2_5_omni", 30) == design_tokens(3000) + memory_plan.PROMPT_TOKENS
    assert memory_plan.sequence_length("audio_flamingo3", 75) == (2 * design_tokens(3000) + design_tokens(1500)
                                                                  + memory_plan.PROMPT_TOKENS)
    assert memory_plan.sequence_length("kimi_audio", 30) == 375 + memory_plan.PROMPT_TOKENS


@pytest.mark.parametrize("axis", ["data", "model"])
def test_activation_fit_predicts_a_third_batch_size(axis):
    mesh = sharding.make_mesh(**{axis: 4})
    fixed, per_seq = memory_plan.activation_bytes("qwen2", TINY, mesh, 48, jnp.dtype(jnp.float32))
    assert per_seq > 0
    module, abstract = ports.models.abstract_params("qwen2", TINY, jnp.float32)
    shardings = sharding.param_shardings(abstract, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    b = 5 * mesh.shape["data"]
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    compiled = jax.jit(lambda p, e, q: module.apply({"params": p}, inputs_embeds=e, logits_positions=q)).lower(
        params, jax.ShapeDtypeStruct((b, 48, 64), jnp.float32, sharding=data),
        jax.ShapeDtypeStruct((b, 1), jnp.int32, sharding=data)).compile()
    measured = compiled.memory_analysis().temp_size_in_bytes
    assert fixed + 5 * per_seq == pytest.approx(measured, rel=0.25)


def test_parameter_bytes_are_the_shards_actually_placed():
    mesh = sharding.make_mesh(data=2, model=4)
    module = ports.Qwen2ForCausalLM(TINY)
    params = module.init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
    placed = sharding.shard_params(params, mesh)
    on_device_0 = sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards
                      if s.device == jax.devices()[0])
    assert sharding.bytes_per_device(params, sharding.param_shardings(params, mesh)) == on_device_0


def test_plan_of_a_real_model():
    slices = (memory_plan.Slice("one 80 GB", 1, 80e9), memory_plan.Slice("eight 16 GiB", 8, 16 * 2**30))
    rows = memory_plan.plan_rows(("qwen2_5_omni",), slices, 30.0, jnp.dtype(jnp.bfloat16), 4)
    assert [(r["slice"], r["mesh"]) for r in rows] == [("one 80 GB", "data:1"), ("eight 16 GiB", "data:8"),
                                                       ("eight 16 GiB", "model:8")]
    whole, split = rows[1]["params_gb"], rows[2]["params_gb"]
    assert whole > 16 and split < whole / 7  # 8.3B bf16 parameters do not fit a 16 GiB chip unsplit
    assert not rows[1]["fits"] and rows[2]["fits"] and rows[2]["max_seqs"] > 0
    assert "does not fit" in memory_plan.markdown(rows, 30.0, jnp.bfloat16)


def test_kimi_rows_hold_the_speech_tokenizer():
    """Kimi-Audio's plan adds the GLM-4-Voice tokenizer's float32 parameters, counted here by hand from DESIGN §3's
    sizes (d 1280, 20 heads, ffn 5120, 16 of 32 layers, 128 mels, 1500 positions, 16384 codes, no final norm)."""
    d, ffn, mels = 1280, 5120, 128
    layer = 3 * d * d + 2 * d + d * d + d + 2 * 2 * d + d * ffn + ffn + ffn * d + d  # q k v (no k bias), o, 2 LN, fc
    count = mels * d * 3 + d + d * d * 3 + d + 1500 * d + 16 * layer + 16384 * d
    assert memory_plan.auxiliary_bytes("kimi_audio") == 4 * count
    assert memory_plan.auxiliary_bytes("qwen2_5_omni") == 0
    one = (memory_plan.Slice("one 80 GB", 1, 80e9),)
    rows = {m: memory_plan.plan_rows((m,), one, 30.0, jnp.dtype(jnp.bfloat16), 4)[0] for m in ("kimi_audio",)}
    _, abstract = memory_plan.abstract_params("kimi_audio", memory_plan.real_config("kimi_audio"), jnp.bfloat16)
    kimi = sum(x.size * 2 for x in jax.tree.leaves(abstract))
    assert rows["kimi_audio"]["params_gb"] * 1e9 == pytest.approx(kimi + 4 * count)
