"""The text loss under stacked interventions against folding each edit into down_proj (DESIGN §2's
weight-space identity) and a plain forward with a numpy log-softmax; the answer-position drift against plain
forwards of the clean and each edited model with a numpy KL; label mass and KL against hand-written sums."""

import math

import jax
import numpy as np
import pytest

import esn_jax
from esn_jax import collateral
from esn_jax import interventions as iv
from ports.sites import fold

# The whole model, unsplit, unswept, no prefix sharing: logits [B, T, vocab] of one (unstacked) intervention.
_forward = jax.jit(lambda module, params, ids, mask, edits: module.apply(
    {"params": params}, input_ids=ids, attention_mask=mask, interventions=edits), static_argnums=0)


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


def answer_logp(module, params, batch, edits=None) -> np.ndarray:
    """The full next-token log-distribution at every row's answer position [B, vocab] (numpy, float64), of one
    plain forward of the prompt under ``edits`` ({site: {kind: [L, I]}}, None: clean)."""
    ids, mask = batch["input_ids"], batch.get("attention_mask", np.ones(batch["input_ids"].shape, np.int32))
    logits = np.asarray(_forward(module, params, ids, mask, edits), np.float64)
    answer = batch.get("answer_positions", np.full(ids.shape[0], ids.shape[1] - 1))
    x = logits[np.arange(ids.shape[0]), answer]
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def direct_drift(module, params, batch, stacked) -> np.ndarray:
    """KL(clean ‖ variant v) at every row's answer position [V, B], variant by variant, in numpy."""
    clean = answer_logp(module, params, batch)
    out = []
    for i in range(len(jax.tree.leaves(stacked)[0])):
        q = answer_logp(module, params, batch, {site: {kind: x[i] for kind, x in edit.items()}
                                                for site, edit in stacked.items()})
        out.append((np.exp(clean) * (clean - q)).sum(-1))
    return np.array(out)


def edit_variants(rng, site: str = "gate_act", layers=(0, 1)) -> dict:
    """Four variants [4, L=2, I=24] on ``site``, touching only ``layers``: the identity, an ablation, a gain of 4
    and an edit with a shift (masked neurons replaced by random constants)."""
    mask = np.zeros((4, 2, 24), bool)
    mask[:, list(layers)] = rng.random((4, len(layers), 24)) < 0.3
    scale, shift = np.ones((4, 2, 24), np.float32), np.zeros((4, 2, 24), np.float32)
    scale[1] = 1.0 - mask[1]
    scale[2] = 1.0 + 3.0 * mask[2]
    scale[3] = 1.0 - mask[3]
    shift[3] = mask[3] * rng.normal(0.0, 1.0, (2, 24))
    return {site: {"scale": scale, "shift": shift}}


def test_answer_drift_is_the_kl_of_plain_forwards(tiny):
    """Multi-token labels (the packed forward), left padding, edits from layer 0 on, three variants per call."""
    module, params = tiny
    rng = np.random.default_rng(5)
    batch = {"input_ids": rng.integers(0, 48, (3, 6)).astype(np.int32),
             "attention_mask": np.array([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1]], np.int32)}
    edits = edit_variants(rng, "mlp_in")
    got = esn_jax.answer_drift(module, params, batch, edits, ((4, 2), (9,), (1, 3, 5)), chunk_size=3)
    assert got.shape == (4, 3)
    want = direct_drift(module, params, batch, edits)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(got[0])).max() < 1e-6  # the identity
    assert want[1:].min() > 1e-3  # every real edit moves the distribution: the comparison is not vacuous


def test_label_mass_by_hand():
    logp = np.array([[math.log(0.5), math.log(0.25), -np.inf],
                     [-np.inf, -np.inf, -np.inf],
                     [-1000.0, -1000.0, math.log(0.1)]], np.float32)
    got = esn_jax.label_mass(logp)
    assert got.dtype == np.float64 and got.shape == (3,)
    want = [sum(math.exp(x) for x in row if x != -math.inf) for row in logp.astype(np.float64).tolist()]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got[1] == 0.0
    np.testing.assert_allclose(got[0], 0.75, rtol=1e-7)
    np.testing.assert_allclose(esn_jax.label_mass(np.stack([logp, logp])), np.stack([want, want]), rtol=1e-12)
    assert np.isclose(esn_jax.label_mass(np.array([-800.0, -800.0])), 0.0, atol=0)  # exp underflows, no nan


def test_kl_divergence_by_hand():
    p = [0.5, 0.3, 0.2, 0.0]
    q = [0.25, 0.25, 0.25, 0.25]
    r = [0.6, 0.4, 0.0, 0.0]
    with np.errstate(divide="ignore"):
        logs = np.log(np.array([p, q, r]))  # log 0 = -inf
    got = esn_jax.kl_divergence(logs[[0, 1, 0]], logs[[1, 0, 0]])
    assert got.dtype == np.float64 and got.shape == (3,)

    def kl(a, b):
        return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b, strict=True) if x > 0)

    np.testing.assert_allclose(got, [kl(p, q), math.inf, 0.0], rtol=1e-12)  # p has 0 where q does not: finite
    assert np.isposinf(got[1])  # q > 0 where p = 0: inf
    assert got[2] == 0.0
    np.testing.assert_allclose(esn_jax.kl_divergence(logs[2], logs[0]), kl(r, p), rtol=1e-12)
    assert esn_jax.kl_divergence(logs[2], logs[2]) == 0.0  # -inf against -inf counts 0, no nan
    np.testing.assert_allclose(esn_jax.kl_divergence(logs[:1], logs), [0.0, kl(p, q), math.inf], rtol=1e-12)
