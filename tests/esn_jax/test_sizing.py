"""esn_jax.sizing: the bisection against brute force, and the compile-only bytes of the sweep against the program
score_variants runs on concrete (and placed) arrays. Tests run with 8 CPU devices (tests/conftest.py)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ports
from esn_jax import decoding, scoring, sizing, sweep
from esn_jax import interventions as iv
from ports import sharding
from tests.esn_jax.conftest import CONFIG

LABELS = ((4,), (9,), (1,))
B, T, V = 4, 6, 3


def test_largest_is_the_brute_force_answer():
    for upper in range(0, 24):
        for threshold in range(-1, 28):
            tried = []

            def fits(n, threshold=threshold, tried=tried):
                tried.append(n)
                return n <= threshold

            want = max((n for n in range(1, upper + 1) if n <= threshold), default=0)
            assert sizing.largest(fits, upper) == want, (upper, threshold)
            assert len(tried) == len(set(tried))


def test_the_answer_fits_and_one_more_was_tried_and_does_not():
    rng = np.random.default_rng(0)
    for _ in range(200):  # any predicate, monotone or not
        upper = int(rng.integers(1, 40))
        table = rng.random(upper + 2) < 0.6
        tried = {}

        def fits(n, table=table, tried=tried):
            tried[n] = bool(table[n])
            return tried[n]

        n = sizing.largest(fits, upper)
        if n == 0:
            assert tried == {1: False}
        else:
            assert tried[n] and (n == upper or tried[n + 1] is False)


def test_nothing_fits():
    tried = []
    assert sizing.largest(lambda n: tried.append(n) or False, 1000) == 0
    assert tried == [1]


def test_largest_within_is_the_brute_force_answer_in_fewer_tries():
    rng = np.random.default_rng(1)
    for _ in range(300):
        upper = int(rng.integers(1, 600))
        steps = rng.random(upper + 1) * (1 + 30 * (rng.random(upper + 1) < 0.01))  # near-linear, a few jumps
        sizes = np.cumsum(steps) + 5 * rng.random()
        limit = float(rng.random() * sizes[-1] * 1.1)
        tried = []

        def size(n, sizes=sizes, tried=tried):
            tried.append(n)
            return float(sizes[n])

        want = max((n for n in range(1, upper + 1) if sizes[n] <= limit), default=0)
        assert sizing.largest_within(size, limit, upper) == want
        assert len(tried) == len(set(tried))
        assert want in (0, upper) or want + 1 in tried
    linear, plain = [], []
    assert sizing.largest_within(lambda n: linear.append(n) or 3.0 * n + 7, 1000.0, 1024) == 331
    assert sizing.largest(lambda n: plain.append(n) or 3.0 * n + 7 <= 1000, 1024) == 331
    assert len(linear) <= 5 < 10 <= len(plain)


@functools.cache
def _tiny(tied: bool):
    module = ports.Qwen2ForCausalLM(dataclasses.replace(CONFIG, tie_word_embeddings=tied))
    params = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    return module, params


def _real_arguments(module, params):
    """The embedded batch and the variant chunks score_variants builds from a raw batch and V ablation masks."""
    rng = np.random.default_rng(1)
    batch = {"input_ids": rng.integers(0, CONFIG.vocab_size, (B, T)).astype(np.int32),
             "attention_mask": np.array([[0, 0, 1, 1, 1, 1]] + [[1] * T] * (B - 1), np.int32)}
    masks = rng.random((V, CONFIG.num_hidden_layers, CONFIG.intermediate_size)) < 0.3
    chunks, _ = sweep.chunk_variants(params, iv.ablate(masks), (B, T))
    return scoring.embed_jitted(module, params, batch), chunks


def _abstract(tree, shardings=None):
    shardings = shardings or jax.tree.map(lambda _: None, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@functools.cache
def _unsharded_bytes() -> int:
    """sweep_bytes of the tied tiny model's concrete parameters on one device."""
    module, params = _tiny(tied=True)
    return sizing.sweep_bytes(module, params, B, T, V, LABELS)


def test_sweep_bytes_are_the_compiled_program_of_concrete_arrays():
    module, params = _tiny(tied=True)  # the sweep reads every parameter (the embedding is the head)
    embedded, chunks = _real_arguments(module, params)
    compiled = sizing.program_bytes(sweep.lower_sweep(module, params, embedded, chunks, LABELS))
    assert sizing.sweep_bytes(module, _abstract(params), B, T, V, LABELS) == compiled == _unsharded_bytes()


def test_generate_bytes_are_the_compiled_program_of_a_real_call():
    """The program esn_jax.generate runs on concrete arrays (no shared prefix, with stop and pad tokens), against the
    compile-only plan; the plan grows with the chunk and with the answer's length (the key/value cache)."""
    module, params = _tiny(tied=True)
    embedded, chunks = _real_arguments(module, params)
    settings = decoding.Settings(max_new_tokens=5, stop_token_ids=(3, 7), pad_token_id=3)
    compiled = sizing.program_bytes(decoding._generate.lower(module, params, embedded, chunks, jax.random.key(0),
                                                             settings))
    assert sizing.generate_bytes(module, _abstract(params), B, T, V, 5) == compiled
    assert sizing.generate_bytes(module, params, B, T, 2 * V, 5) > compiled
    assert sizing.generate_bytes(module, params, B, T, V, 40) > compiled


def test_parameters_the_sweep_does_not_read_still_count():
    module, params = _tiny(tied=False)  # the sweep starts from embeddings: embed_tokens is not read
    embedded, chunks = _real_arguments(module, params)
    compiled = sizing.program_bytes(sweep.lower_sweep(module, params, embedded, chunks, LABELS))
    unread = params["model"]["embed_tokens"]["embedding"].nbytes
    assert sizing.sweep_bytes(module, _abstract(params), B, T, V, LABELS) == compiled + unread


@pytest.mark.parametrize("axes", [{"data": 2}, {"model": 2}])
def test_bytes_per_device_of_a_mesh(axes):
    module, params = _tiny(tied=True)
    mesh = sharding.make_mesh(**axes)
    placed = sharding.shard_params(params, mesh)
    embedded, chunks = _real_arguments(module, params)
    embedded = sharding.shard_batch(embedded, mesh)
    chunks = jax.device_put(chunks, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    compiled = sizing.program_bytes(sweep.lower_sweep(module, placed, embedded, chunks, LABELS))
    abstract = _abstract(params, sharding.param_shardings(params, mesh))
    per_device = sizing.sweep_bytes(module, abstract, B, T, V, LABELS, mesh=mesh)
    assert per_device == compiled
    on_device_0 = sum(s.data.nbytes for x in jax.tree.leaves((placed, embedded, chunks)) for s in x.addressable_shards
                      if s.device == jax.devices()[0])
    assert sizing.sweep_footprint(module, abstract, B, T, V, LABELS, mesh=mesh).arguments == on_device_0
    assert per_device < _unsharded_bytes()  # split, not the whole program


def test_budget():
    assert sizing.budget(12345) == 12345
    assert 0 < sizing.budget() == int(sizing.HEADROOM * sizing.device_memory()) < sizing.device_memory()


def test_float32_edits_and_the_parameters_dtype():
    module = ports.Qwen2ForCausalLM(CONFIG, jnp.bfloat16)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), np.zeros((1, 4), np.int32)))["params"]
    _, embedded, chunks = sizing.sweep_arguments(module, params, B, T, V)
    assert embedded["inputs_embeds"].dtype == jnp.bfloat16 and embedded["inputs_embeds"].shape == (B, T, 16)
    assert chunks["gate_act"]["scale"].shape == (1, V, CONFIG.num_hidden_layers, CONFIG.intermediate_size)
    assert chunks["gate_act"]["scale"].dtype == jnp.float32  # as iv.ablate / iv.gain make them
