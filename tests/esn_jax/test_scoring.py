"""Constrained scoring against brute-force full-sequence forwards, one row and one label at a time."""

import functools

import jax
import numpy as np
import pytest

from esn_jax import interventions, scoring

LABELS = ((3, 7), (5,), (11, 2, 9))
score_labels = jax.jit(scoring.score_labels, static_argnames=("module", "label_token_ids"))




@functools.partial(jax.jit, static_argnums=0)
def _full_logp(module, params, ids, edits):
    logits = module.apply({"params": params}, input_ids=ids[None], interventions=edits)[0]
    return jax.nn.log_softmax(logits.astype(np.float32), axis=-1)


def full_logp(module, params, ids, scale=None):
    """log_softmax of the full logits [T, V] of one unpadded row (the oracle's only model call)."""
    edits = None if scale is None else {"gate_act": {"scale": scale}}
    return np.asarray(_full_logp(module, params, np.asarray(ids, np.int32), edits), np.float64)


def oracle(module, params, prompt, labels, scale_for=None):
    """Σ_j log p(label token j | prompt + label[:j]) for every label, by one forward per label."""
    out = []
    for label in labels:
        seq = list(prompt) + list(label)
        scale = None if scale_for is None else scale_for(len(seq))
        logp = full_logp(module, params, seq, scale)
        out.append(sum(logp[len(prompt) - 1 + j, tok] for j, tok in enumerate(label)))
    return np.array(out)


def test_single_token_labels_match_full_forward(tiny):
    module, params = tiny
    ids = np.random.default_rng(0).integers(0, 48, (3, 6)).astype(np.int32)
    got = np.asarray(score_labels(module, params, {"input_ids": ids}, ((4,), (9,), (1,))))
    for b in range(3):
        np.testing.assert_allclose(got[b], full_logp(module, params, ids[b])[-1, [4, 9, 1]], rtol=1e-5, atol=1e-5)


def test_multi_token_labels_score_whole_sequence(tiny):
    module, params = tiny
    ids = np.random.default_rng(1).integers(0, 48, (2, 5)).astype(np.int32)
    got = np.asarray(score_labels(module, params, {"input_ids": ids}, LABELS))
    for b in range(2):
        np.testing.assert_allclose(got[b], oracle(module, params, ids[b], LABELS), rtol=1e-5, atol=1e-5)


def test_left_padding_and_explicit_answer_positions(tiny):
    """A left-padded row (answer at T-1) and a right-padded row (explicit answer position) score as unpadded."""
    module, params = tiny
    rng = np.random.default_rng(2)
    short, long_ = rng.integers(1, 48, 4), rng.integers(1, 48, 6)
    left = np.stack([np.r_[[0, 0], short], long_]).astype(np.int32)
    left_mask = np.array([[0, 0, 1, 1, 1, 1], [1] * 6], np.int32)
    got = np.asarray(score_labels(module, params, {"input_ids": left, "attention_mask": left_mask}, LABELS))
    np.testing.assert_allclose(got[0], oracle(module, params, short, LABELS), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], oracle(module, params, long_, LABELS), rtol=1e-4, atol=1e-4)
    right = np.stack([np.r_[short, [0, 0]], long_]).astype(np.int32)
    batch = {"input_ids": right, "attention_mask": left_mask[:, ::-1].copy(), "answer_positions": np.array([3, 5])}
    got = np.asarray(score_labels(module, params, batch, LABELS))
    np.testing.assert_allclose(got[0], oracle(module, params, short, LABELS), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], oracle(module, params, long_, LABELS), rtol=1e-4, atol=1e-4)


def test_inputs_embeds_equal_input_ids(tiny):
    module, params = tiny
    ids = np.random.default_rng(3).integers(0, 48, (2, 5)).astype(np.int32)
    embeds = module.apply({"params": params}, ids, method="embed_inputs")
    a = score_labels(module, params, {"input_ids": ids}, LABELS)
    b = score_labels(module, params, {"inputs_embeds": embeds}, LABELS)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_position_specific_edit_covers_prompt_only(tiny):
    """An [L, B, T, I] edit scales the chosen prompt positions; appended label tokens stay unedited."""
    module, params = tiny
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 48, (2, 5)).astype(np.int32)
    pos = np.zeros((2, 5), bool)
    pos[:, 1:3] = True
    mask = rng.random((2, 24)) < 0.3
    edits = interventions.at_positions(interventions.gain(mask, 2.0), pos)
    got = np.asarray(score_labels(module, params, {"input_ids": ids}, LABELS, edits))
    for b in range(2):
        def scale_for(length, b=b):
            scale = np.ones((2, 1, length, 24), np.float32)
            scale[:, 0, 1:3] = np.where(mask, 3.0, 1.0)[:, None, :]
            return scale
        np.testing.assert_allclose(got[b], oracle(module, params, ids[b], LABELS, scale_for), rtol=1e-4, atol=1e-4)


def test_empty_label_is_refused(tiny):
    module, params = tiny
    with pytest.raises(ValueError, match="at least one token"):
        scoring.score_labels(module, params, {"input_ids": np.zeros((1, 3), np.int32)}, [[1], []])
