"""The text loss under stacked interventions against folding each edit into down_proj (DESIGN §2's
weight-space identity) and a plain forward with a numpy log-softmax."""

import numpy as np
import pytest

from esn_jax import collateral
from esn_jax import interventions as iv
from ports.sites import fold


def direct_loss(module, params, ids, mask, scale) -> np.ndarray:
    """Mean next-token NLL per row [B] of the model with ``scale`` [L, I] folded into its weights."""
    logits = np.asarray(module.apply({"params": fold(params, scale)}, input_ids=ids, attention_mask=mask),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    out = []
    for row in range(ids.shape[0]):
        real = np.flatnonzero(mask[row])
        out.append(-np.mean([logp[row, j, ids[row, j + 1]] for j in real[:-1]]))
    return np.array(out)


@pytest.mark.parametrize("site", ["gate_act", "mlp_in"])
def test_text_loss_equals_folded_weights(tiny, site):
    module, params = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 48, (3, 7)).astype(np.int32)
    # Right padding (the study's), a full row, and a left-padded row.
    mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7, [0, 0, 0, 0, 0, 1, 1]], np.int32)
    masks = rng.random((5, 2, 24)) < 0.4
    masks[2] = False  # the identity variant
    got = np.asarray(collateral.text_loss(module, params, ids, mask, iv.ablate(masks, site), chunk_size=2))
    assert got.shape == (5, 3)
    for v in range(5):
        np.testing.assert_allclose(got[v], direct_loss(module, params, ids, mask, 1.0 - masks[v]), rtol=1e-5)
    assert not np.allclose(got[0], got[2])  # ablation moves the loss: the comparison above is not vacuous


def test_gain_matches_folded_weights(tiny):
    module, params = tiny
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 48, (2, 6)).astype(np.int32)
    mask = np.ones((2, 6), np.int32)
    masks = rng.random((3, 2, 24)) < 0.5
    got = np.asarray(collateral.text_loss(module, params, ids, mask, iv.gain(masks, 3.0)))
    for v in range(3):
        np.testing.assert_allclose(got[v], direct_loss(module, params, ids, mask, 1.0 + 3.0 * masks[v]), rtol=1e-5)


def test_rows_without_a_next_token_are_refused(tiny):
    module, params = tiny
    ids = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="at least two tokens"):
        collateral.text_loss(module, params, ids, np.array([[1, 1, 0, 0], [1, 0, 0, 0]]),
                             iv.ablate(np.zeros((1, 2, 24), bool)))


def test_plain_text_prompts():
    assert 16 <= len(collateral.PLAIN_TEXT) <= 24 and len(set(collateral.PLAIN_TEXT)) == len(collateral.PLAIN_TEXT)
    assert all(len(p.split()) * 2 <= collateral.MAX_TOKENS for p in collateral.PLAIN_TEXT)
