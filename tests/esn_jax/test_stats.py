"""Streaming statistics against a brute-force numpy computation over fully captured activations."""

import functools

import jax
import numpy as np
import pytest

import ports
from esn_jax import stats as st

LABEL_TOKENS = [[4], [9], [1]]
E = 3


@functools.partial(jax.jit, static_argnums=0)
def _capture(module, params, batch):
    logits, state = module.apply({"params": params}, **batch, capture_intermediates=ports.capture_filter("gate_act"))
    return logits, ports.collect(state["intermediates"])["gate_act"]


def capture(module, params, batch):
    """Full logits [B, T, V] and every gate_act [L, B, T, I] of a batch (no streaming)."""
    logits, acts = _capture(module, params, batch)
    return np.asarray(logits, np.float64), np.asarray(acts, np.float64)


def make_batches(module, params, seed):
    """Two left-padded batches whose labels make some items right and some wrong for the clean model."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(2):
        ids = rng.integers(0, 48, (4, 6)).astype(np.int32)
        mask = np.ones((4, 6), np.int32)
        mask[1, :2] = 0
        mask[3, :1] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        logits, _ = capture(module, params, batch)
        pred = logits[:, -1, [t[0] for t in LABEL_TOKENS]].argmax(-1)
        labels = np.where(np.arange(4) % 2 == 0, pred, (pred + 1) % E)
        audio = rng.random((4, 6)) < 0.5
        batches.append((batch, labels, audio))
    return batches


def clean_prediction(module, params, batch, b, label_tokens):
    """argmax over labels of Σ log p(label tokens), one full forward of row b's real tokens per label."""
    prompt = batch["input_ids"][b][batch["attention_mask"][b] == 1]
    scores = []
    for label in label_tokens:
        seq = np.r_[prompt, label].astype(np.int32)[None]
        logits, _ = capture(module, params, {"input_ids": seq, "attention_mask": np.ones_like(seq)})
        logp = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
        scores.append(sum(logp[len(prompt) - 1 + j, tok] for j, tok in enumerate(label)))
    return int(np.argmax(scores))


def brute_force(module, params, batches, positions, success_filter, label_tokens=LABEL_TOKENS):
    count, s1, s2 = (np.zeros((E, 2, 24)) for _ in range(3))
    tokens, items = np.zeros(E), np.zeros(E)
    for batch, labels, audio in batches:
        _, acts = capture(module, params, batch)
        for b, label in enumerate(labels):
            if success_filter and clean_prediction(module, params, batch, b, label_tokens) != label:
                continue
            items[label] += 1
            for t in range(acts.shape[2]):
                real = batch["attention_mask"][b, t] == 1
                use = {"all": real, "audio": real and audio[b, t], "answer": t == acts.shape[2] - 1}[positions]
                if use:
                    a = acts[:, b, t]
                    count[label] += a > 0
                    s1[label] += a
                    s2[label] += a * a
                    tokens[label] += 1
    return count, s1, s2, tokens, items


def stream(module, params, batches, config, label_tokens=LABEL_TOKENS):
    stats = st.EmotionStats.zeros(E, 2, 24, config)
    for batch, labels, audio in batches:
        stats, _ = st.update(stats, module, params, batch, labels, label_tokens, config, audio_mask=audio)
    return stats


@pytest.mark.parametrize("positions,success_filter,label_tokens", [
    ("all", True, LABEL_TOKENS), ("audio", False, LABEL_TOKENS), ("answer", True, LABEL_TOKENS),
    ("all", True, [[4, 2], [9], [1, 1, 3]])])
def test_stream_equals_brute_force(tiny, positions, success_filter, label_tokens):
    module, params = tiny
    batches = make_batches(module, params, 0)
    got = stream(module, params, batches, st.StatsConfig(positions=positions, success_filter=success_filter),
                 label_tokens)
    count, s1, s2, tokens, items = brute_force(module, params, batches, positions, success_filter, label_tokens)
    assert 0 < items.sum() < 8 or not success_filter
    np.testing.assert_array_equal(np.asarray(got.count_pos), count)
    np.testing.assert_allclose(np.asarray(got.sum), s1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.sum_sq), s2, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(got.items), items)
    assert np.asarray(got.items_seen).sum() == 8
    with np.errstate(invalid="ignore"):
        mu = np.where(tokens[:, None, None] > 0, s1 / tokens[:, None, None], 0)
        var = np.where(tokens[:, None, None] > 0, s2 / tokens[:, None, None], 0) - mu**2
    np.testing.assert_allclose(np.asarray(got.mean()), mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.std()), np.sqrt(np.maximum(var, 0)), rtol=1e-3, atol=1e-3)


def test_merge_is_the_union_and_associative(tiny):
    module, params = tiny
    config = st.StatsConfig(success_filter=False)
    batches = make_batches(module, params, 1) + make_batches(module, params, 2)[:1]
    parts = [stream(module, params, [b], config) for b in batches]
    whole = stream(module, params, batches, config)
    left, right = (parts[0] + parts[1]) + parts[2], parts[0] + (parts[1] + parts[2])
    for a, b in ((left, whole), (left, right)):
        for name in ("count_pos", "tokens", "items", "items_seen"):
            np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
        for name in ("sum", "sum_sq"):
            np.testing.assert_allclose(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), rtol=1e-6)


def test_stats_of_another_model_or_pooling_are_refused(tiny):
    module, params = tiny
    batch = {"input_ids": np.zeros((1, 4), np.int32)}
    other = st.EmotionStats.zeros(E, 3, 24)
    with pytest.raises(ValueError, match="L=3, I=24"):
        st.update(other, module, params, batch, [0], LABEL_TOKENS)
    with pytest.raises(ValueError, match="cannot merge"):
        _ = st.EmotionStats.zeros(E, 2, 24) + st.EmotionStats.zeros(E, 2, 24, st.StatsConfig(site="mlp_in"))
    with pytest.raises(ValueError, match="3 labels"):
        st.update(st.EmotionStats.zeros(2, 2, 24), module, params, batch, [0], LABEL_TOKENS)
    with pytest.raises(ValueError, match="audio_mask"):
        st.update(st.EmotionStats.zeros(E, 2, 24, st.StatsConfig(positions="audio")), module, params, batch, [0],
                  LABEL_TOKENS, st.StatsConfig(positions="audio"))


def test_stats_are_a_pytree_that_jit_carries(tiny):
    stats = st.EmotionStats.zeros(E, 2, 24, st.StatsConfig(site="mlp_in", positions="answer"))
    doubled = jax.jit(lambda s: s + s)(stats)
    assert (doubled.site, doubled.positions, doubled.num_layers) == ("mlp_in", "answer", 2)
