"""Shared-prefix sweeps: which tokens are shared, and scores equal to scoring every full row."""

import jax
import numpy as np
import pytest

from esn_jax import interventions as iv
from esn_jax import prefix, reference, scoring, sweep

LABELS = ((4, 2), (9,), (1,))
score_labels = jax.jit(scoring.score_labels, static_argnames=("module", "label_token_ids"))
TABLE = np.random.default_rng(0).standard_normal((48, 3)).astype(np.float32)


def embedded(rows, width, left=True, **extra):
    """Rows of token ids padded to ``width`` -> an embedded batch (a lookup table stands in for a model)."""
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[b, cols], mask[b, cols] = row, 1
    return {"inputs_embeds": TABLE[ids], "attention_mask": mask, **extra}


def test_shared_length_counts_the_common_leading_tokens():
    rows = [[5, 6, 7, 1, 2], [5, 6, 7, 3], [5, 6, 7, 8, 9, 10]]
    assert prefix.shared_length(embedded(rows, 8)) == 3
    answers = np.array([len(r) - 1 for r in rows])
    assert prefix.shared_length(embedded(rows, 8, left=False, answer_positions=answers)) == 3
    # Every row keeps its answer token: a row that is all prefix caps P at its length - 1.
    assert prefix.shared_length(embedded([[5, 6, 7], [5, 6, 7, 8]], 5)) == 2
    # Positions must agree too.
    batch = embedded(rows, 8)
    positions = np.maximum(batch["attention_mask"].cumsum(1) - 1, 0)
    assert prefix.shared_length({**batch, "position_ids": positions}) == 3
    positions[1, 5] = 9  # row 1's second token (it is left-padded by 4)
    assert prefix.shared_length({**batch, "position_ids": positions}) == 1


@pytest.mark.parametrize("case", ["one row", "holes in the mask", "no common token", "unknown input"])
def test_nothing_is_shared_when_sharing_does_not_apply(case):
    rows = [[5, 6, 7, 1], [5, 6, 7, 3]]
    if case == "one row":
        batch = embedded(rows[:1], 6)
    elif case == "no common token":
        batch = embedded([[1, 6, 7], [2, 6, 7]], 4)
    elif case == "unknown input":
        batch = embedded(rows, 6, token_type_ids=np.zeros((2, 6)))
    else:
        batch = embedded(rows, 6)
        batch["attention_mask"][0, 3] = 0
    assert prefix.shared_length(batch) == 0


def test_split_keeps_padding_positions_and_answers():
    rows = [[5, 6, 7, 1, 2], [5, 6, 7, 3]]
    batch = embedded(rows, 6, left=False, answer_positions=np.array([4, 3]),
                     position_ids=np.tile(np.arange(6), (2, 1)) + 10)
    head, rest = prefix.split(batch, 3)
    np.testing.assert_array_equal(head["inputs_embeds"], TABLE[[[5, 6, 7]]])
    np.testing.assert_array_equal(head["position_ids"], [[10, 11, 12]])
    np.testing.assert_array_equal(rest["inputs_embeds"], TABLE[[[1, 2, 0], [3, 0, 0]]])
    np.testing.assert_array_equal(rest["attention_mask"], [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(rest["position_ids"], [[13, 14, 15], [13, 14, 15]])
    np.testing.assert_array_equal(rest["answer_positions"], [1, 0])


def assert_sweep_equals_rows(module, params, batch, labels, edits, **kw):
    """score_variants over the stacked ``edits`` == score_labels of the full rows under each edit alone."""
    labels = scoring.label_tokens(labels)
    got = np.asarray(sweep.score_variants(module, params, batch, iv.stack(edits), labels, **kw))
    for v, edit in enumerate(edits):
        want = score_labels(module, params, batch, labels, edit)
        np.testing.assert_allclose(got[v], np.asarray(want), rtol=1e-4, atol=1e-4)


def shared_prompts(rng, lengths, shared=4):
    """Rows that start with the same ``shared`` tokens, then differ; left-padded to the longest."""
    head = rng.integers(1, 48, shared)
    rows = [np.r_[head, rng.integers(1, 48, n)] for n in lengths]
    width = max(map(len, rows))
    ids = np.stack([np.r_[np.zeros(width - len(r), int), r] for r in rows]).astype(np.int32)
    mask = np.stack([np.r_[np.zeros(width - len(r)), np.ones(len(r))] for r in rows]).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("labels", [LABELS, ((4,), (9,), (1,))], ids=["multi-token", "single-token"])
def test_sweep_with_a_shared_prefix_equals_full_rows(tiny, labels):
    module, params = tiny
    rng = np.random.default_rng(1)
    batch = shared_prompts(rng, [3, 5, 2])
    assert prefix.shared_length(scoring.embed(module, params, batch)) == 4
    edits = [iv.gain(m, 2.0) for m in rng.random((5, 2, 24)) < 0.3]
    assert_sweep_equals_rows(module, params, batch, labels, edits, chunk_size=2)


def test_right_padding_with_answer_positions_and_position_ids(tiny):
    module, params = tiny
    rng = np.random.default_rng(2)
    left = shared_prompts(rng, [3, 1])
    order = np.argsort(1 - left["attention_mask"], axis=1, kind="stable")  # move the padding to the right
    batch = {k: np.take_along_axis(v, order, axis=1) for k, v in left.items()}
    batch["answer_positions"] = batch["attention_mask"].sum(1) - 1
    batch["position_ids"] = np.maximum(batch["attention_mask"].cumsum(1) - 1, 0) + 3  # any shared numbering
    assert prefix.shared_length(scoring.embed(module, params, batch)) == 4
    assert_sweep_equals_rows(module, params, batch, LABELS, [iv.ablate(m) for m in rng.random((3, 2, 24)) < 0.3])


def test_position_specific_edits_do_not_share(tiny):
    """Edits that differ by row and position cannot share the prefix; the sweep still scores them right."""
    module, params = tiny
    rng = np.random.default_rng(3)
    batch = shared_prompts(rng, [3, 2])
    positions = rng.random((2, 7)) < 0.5
    edits = [iv.at_positions(iv.gain(m, 3.0), positions) for m in rng.random((2, 2, 24)) < 0.3]
    assert_sweep_equals_rows(module, params, batch, LABELS, edits)


def test_reference_lalm_shares_its_text_prefix_and_scores_alike():
    """The shipped Omni-layout model: the prompt up to the first audio token is shared by every clip."""
    module, params, tokenizer, meta = reference.load_reference()
    rng = np.random.default_rng(4)
    frames = np.array([200, 120, 64])
    features = {"input_features": rng.standard_normal((3, 128, 200)).astype(np.float32),
                "feature_attention_mask": (np.arange(200)[None] < frames[:, None]).astype(np.int32)}
    batch = reference.model_batch(tokenizer, meta, features)
    first_audio = [int(np.argmax(row == module.config.audio_token_id)) - int(np.argmax(m))
                   for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    assert prefix.shared_length(scoring.embed(module, params, batch)) == min(first_audio) > 10
    edits = [iv.gain(m, 4.0, "mlp_in") for m in rng.random((4, 2, 256)) < 0.05]
    assert_sweep_equals_rows(module, params, batch, meta["label_token_ids"], edits)
