"""The free-form steering stages' model-facing parts: DiffMean from stored statistics (against a direct computation),
and a model broken by a large gain scoring 0 on fluency (the shipped mini-LALM, whose answers to any clip are a label
word)."""

import jax
import numpy as np
import pytest

import esn_jax
from configs.study import get_config
from esn_jax import scoring
from esn_jax.data import pipeline
from experiments.study import adapters, answers, steering
from experiments.study.steering import score


def test_diffmean_from_stored_statistics():
    rng = np.random.default_rng(1)
    stats = esn_jax.EmotionStats.zeros(3, 2, 5).replace(
        sum=rng.normal(size=(3, 2, 5)).astype(np.float32), tokens=np.array([4, 10, 6], np.int32))
    got = steering.stages.diffmean(stats)
    total, tokens = np.asarray(stats.sum, np.float64), [4, 10, 6]
    for e in range(3):
        others = [f for f in range(3) if f != e]
        want = total[e] / tokens[e] - sum(total[f] for f in others) / sum(tokens[f] for f in others)
        assert np.allclose(got[e], want)
    esn = np.array([[[[1, 0, 0, 0, 0], [0] * 5]] * 3, [[[0, 1, 0, 0, 0], [0] * 5]] * 3], bool)  # [S, E, L, I]
    masks = steering.stages.diffmean_masks(esn)
    assert masks[0, 0].sum() == 2 and masks[1, 0, 0].all() and not masks[1, 0, 1].any()


@pytest.fixture(scope="module")
def mini():
    return adapters.load_model(get_config())


def test_a_large_gain_breaks_fluency(mini):
    """Answers of the mini-LALM to two clips, clean and with a gain of ×51 on every neuron of every layer: the
    clean ones are label words (fluent, by construction of its training), the broken ones score 0 on fluency."""
    cfg = get_config("batch_size=2")
    rng = np.random.default_rng(0)
    items = [pipeline.Example(wave=(0.1 * rng.normal(size=32000)).astype(np.float32), label=i, speaker="x", id=str(i))
             for i in range(2)]
    batch = next(adapters.batches(mini, items, cfg))
    embedded = scoring.embed_jitted(mini.module, mini.params, adapters.model_inputs(batch))
    layers, neurons = esn_jax.model_dims(mini.params)
    edits = esn_jax.stack([esn_jax.gain(np.zeros((layers, neurons), bool), 0.0),
                           esn_jax.gain(np.ones((layers, neurons), bool), 50.0)])
    stop = tuple(t for t in (mini.tokenizer.convert_tokens_to_ids("<|im_end|>"),) if t is not None)
    ids, lengths = esn_jax.generate(mini.module, mini.params, embedded, 8, edits, stop_token_ids=stop,
                                    pad_token_id=mini.tokenizer.pad_token_id)
    texts = answers.decode(mini.tokenizer, ids, lengths)
    clean = texts[:2]
    assert all(answers.named(t, mini.labels) == 1 for t in clean), clean
    said = [t for t in texts if t]
    loss = dict(zip(said, steering.stages.frame_loss(mini.module, mini.params, mini.tokenizer, said, mini.question),
                    strict=True))
    ref = score.reference([loss[t] for t in clean])
    rows = np.asarray(ids).reshape(-1, ids.shape[-1])
    reps = [score.repetition([t for t in row[:n] if t not in stop]) for row, n in
            zip(rows, np.asarray(lengths).reshape(-1), strict=True)]
    fluency = [float(score.fluency(loss.get(t, np.nan), r, ref)) for t, r in zip(texts, reps, strict=True)]
    assert fluency[:2] == [1.0, 1.0] and fluency[2:] == [0.0, 0.0], (texts, fluency)
    assert jax.numpy.isfinite(np.asarray(list(loss.values()))).all()
