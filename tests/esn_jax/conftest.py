"""A tiny random Qwen2 backbone shared by the esn_jax tests."""

import jax
import numpy as np
import pytest

import ports

CONFIG = ports.DecoderConfig(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=8)


@pytest.fixture(scope="session")
def tiny():
    """(module, params) of the tiny model; params are numpy so tests can edit copies."""
    module = ports.Qwen2ForCausalLM(CONFIG)
    params = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    return module, jax.tree.map(np.asarray, params)

