"""Interventions: the weight-space oracle, per-item and per-position forms, and refused inputs."""

import functools

import jax
import numpy as np
import pytest

from esn_jax import interventions as iv
from esn_jax import scoring
from esn_jax import stats as st

LABELS = ((4,), (9,), (1,))
score_labels = jax.jit(scoring.score_labels, static_argnames=("module", "label_token_ids"))


@functools.partial(jax.jit, static_argnums=0)
def logits_of(module, params, ids, edits):
    return module.apply({"params": params}, input_ids=ids, interventions=edits)


def with_down_proj_rows_scaled(params, row_scale):
    """params whose down_proj kernel [L, I, H] has row n of layer l multiplied by row_scale[l, n]."""
    edited = jax.tree.map(np.copy, params)
    mlp = edited["model"]["layers"]["mlp"]
    mlp["down_proj"]["kernel"] = mlp["down_proj"]["kernel"] * row_scale[:, :, None]
    return edited


@pytest.mark.parametrize("site", ["gate_act", "mlp_in"])
def test_ablate_and_gain_equal_editing_down_proj(tiny, site):
    module, params = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 48, (2, 5)).astype(np.int32)
    mask = rng.random((2, 24)) < 0.25
    for edits, row_scale in ((iv.ablate(mask, site), np.where(mask, 0.0, 1.0)),
                             (iv.gain(mask, 1.5, site), np.where(mask, 2.5, 1.0))):
        got = logits_of(module, params, ids, edits)
        want = logits_of(module, with_down_proj_rows_scaled(params, row_scale), ids, None)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_identity_intervention_is_bit_exact(tiny):
    module, params = tiny
    ids = np.random.default_rng(1).integers(0, 48, (2, 5)).astype(np.int32)
    none = logits_of(module, params, ids, None)
    for edits in (iv.ablate(np.zeros((2, 24), bool)), iv.gain(np.ones((2, 24), bool), 0.0)):
        np.testing.assert_array_equal(np.asarray(logits_of(module, params, ids, edits)), np.asarray(none))


def test_mean_ablate_writes_the_pooled_mean(tiny):
    module, params = tiny
    rng = np.random.default_rng(2)
    stats = st.EmotionStats.zeros(3, 2, 24)
    stats = stats.replace(sum=rng.normal(size=(3, 2, 24)).astype(np.float32), tokens=np.array([3, 0, 5], np.int32))
    mask = rng.random((2, 24)) < 0.3
    edits = iv.mean_ablate(mask, stats)
    pooled = np.asarray(stats.sum).sum(0) / 8.0
    value = rng.normal(size=(2, 4, 24))
    got = value * np.asarray(edits["gate_act"]["scale"])[:, None] + np.asarray(edits["gate_act"]["shift"])[:, None]
    want = np.where(mask[:, None], pooled[:, None], value)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        iv.mean_ablate(np.zeros((3, 24), bool), stats)
    with pytest.raises(ValueError, match="gathered at"):
        iv.mean_ablate(mask, stats, site="mlp_in")


def test_union_mix_and_stack_formulas():
    rng = np.random.default_rng(3)
    masks = rng.random((3, 2, 24)) < 0.2
    union = np.asarray(iv.union(masks, 2.0)["gate_act"]["scale"])
    np.testing.assert_array_equal(union, 1 + 2.0 * (masks[0] | masks[1] | masks[2]))
    w = [0.5, 0.25, 0.25]
    mix = np.asarray(iv.mix(masks, w, 4.0)["gate_act"]["scale"])
    np.testing.assert_allclose(mix, 1 + 4.0 * sum(wi * m for wi, m in zip(w, masks, strict=True)), rtol=1e-6)
    stacked = iv.stack([iv.ablate(m) for m in masks])
    np.testing.assert_array_equal(np.asarray(stacked["gate_act"]["scale"]), 1.0 - masks)
    np.testing.assert_array_equal(np.asarray(iv.ablate(masks)["gate_act"]["scale"]), 1.0 - masks)


def test_two_pass_gives_each_item_its_predicted_mask(tiny):
    module, params = tiny
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 48, (3, 5)).astype(np.int32)
    masks = rng.random((3, 2, 24)) < 0.3
    preds = np.array([2, 0, 2])
    got = score_labels(module, params, {"input_ids": ids}, LABELS, iv.two_pass(masks, preds, 3.0))
    for b in range(3):
        one = score_labels(module, params, {"input_ids": ids[b:b + 1]}, LABELS, iv.gain(masks[preds[b]], 3.0))
        np.testing.assert_allclose(np.asarray(got[b]), np.asarray(one[0]), rtol=1e-5, atol=1e-5)


def test_at_positions_edits_only_chosen_positions():
    rng = np.random.default_rng(5)
    mask = rng.random((2, 24)) < 0.3
    pos = rng.random((3, 5)) < 0.5
    scale = np.asarray(iv.at_positions(iv.gain(mask, 1.0), pos)["gate_act"]["scale"])
    assert scale.shape == (2, 3, 5, 24)
    for b in range(3):
        for t in range(5):
            np.testing.assert_array_equal(scale[:, b, t], np.where(mask, 2.0, 1.0) if pos[b, t] else 1.0)


def test_bad_inputs_are_refused(tiny):
    module, params = tiny
    mask = np.zeros((2, 24), bool)
    with pytest.raises(ValueError, match="alpha"):
        iv.gain(mask, -1.5)
    with pytest.raises(ValueError, match="bool"):
        iv.ablate(np.zeros((2, 24)))
    with pytest.raises(ValueError, match="weights"):
        iv.mix(np.zeros((3, 2, 24), bool), [0.9, 0.9, 0.0], 1.0)
    with pytest.raises(ValueError, match="shape"):
        logits_of(module, params, np.zeros((1, 4), np.int32), iv.ablate(np.zeros((2, 23), bool)))
