"""The vmapped, chunked sweep against a Python loop over interventions, and its single compilation."""

import jax
import numpy as np
import pytest

from esn_jax import interventions as iv
from esn_jax import scoring, sweep

LABELS = ((4, 2), (9,), (1,))
score_labels = jax.jit(scoring.score_labels, static_argnames=("module", "label_token_ids"))


def test_sweep_equals_a_loop_over_masks(tiny):
    module, params = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 48, (2, 5)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.array([[0, 1, 1, 1, 1], [1] * 5], np.int32)}
    masks = rng.random((5, 2, 24)) < 0.3
    edits = iv.gain(masks, 2.0)
    got = np.asarray(sweep.score_variants(module, params, batch, edits, LABELS, chunk_size=2))
    assert got.shape == (5, 2, 3)
    for v in range(5):
        want = score_labels(module, params, batch, LABELS, iv.gain(masks[v], 2.0))
        np.testing.assert_allclose(got[v], np.asarray(want), rtol=1e-5, atol=1e-5)


def test_new_mask_values_reuse_one_compilation(tiny):
    module, params = tiny
    rng = np.random.default_rng(1)
    batch = {"input_ids": rng.integers(0, 48, (3, 7)).astype(np.int32)}
    before = sweep._sweep._cache_size()
    masks = [rng.random((4, 2, 24)) < 0.5 for _ in range(3)]
    outs = [sweep.score_variants(module, params, batch, iv.ablate(m), LABELS) for m in masks]
    assert sweep._sweep._cache_size() == before + 1
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))


def test_identity_variant_matches_clean_scoring(tiny):
    module, params = tiny
    batch = {"input_ids": np.random.default_rng(2).integers(0, 48, (2, 5)).astype(np.int32)}
    got = sweep.score_variants(module, params, batch, iv.ablate(np.zeros((2, 2, 24), bool)), LABELS)
    clean = score_labels(module, params, batch, LABELS)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(clean), rtol=1e-6, atol=1e-6)


def test_masks_that_do_not_fit_the_model_are_refused(tiny):
    module, params = tiny
    batch = {"input_ids": np.zeros((2, 5), np.int32)}
    with pytest.raises(ValueError, match="bad interventions"):
        sweep.score_variants(module, params, batch, iv.ablate(np.zeros((4, 3, 24), bool)), LABELS)
    with pytest.raises(ValueError, match="bad interventions"):
        sweep.score_variants(module, params, batch, iv.ablate(np.zeros((4, 2, 25), bool)), LABELS)
    with pytest.raises(ValueError, match="variant axis"):
        edits = {"gate_act": {"scale": np.ones((4, 2, 24)), "shift": np.zeros((3, 2, 24))}}
        sweep.score_variants(module, params, batch, edits, LABELS)
