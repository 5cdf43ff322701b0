"""The free-form steering evaluation's formulas, each against an independent computation written here: the
harmonic-mean score from stored answers, the held-out choice of α from stored per-α scores, the matched-cost
interpolation, the DiffMean vectors from stored statistics; and a model broken by a large gain scoring 0 on fluency
(the shipped mini-LALM, whose answers to any clip are a label word)."""

import math

import jax
import numpy as np
import pytest

import esn_jax
from configs.study import get_config
from esn_jax import scoring
from esn_jax.data import pipeline
from experiments.study import adapters, answers, steering
from experiments.study import steering_score as score

LABELS = ("neutral", "happy", "sad", "angry")


def by_hand(parsed, named, loss, rep, target, ref):
    """One answer's score toward ``target``, written out from the rule in steering_score's docstring."""
    emotion = 1.0 if parsed == target else 0.0
    instruction = 1.0 if named == 1 else 0.0
    if math.isnan(loss) or math.isnan(ref):
        fluency = 0.0
    else:
        f_loss = 1.0 if loss <= ref else max(0.0, 1.0 - (loss - ref) / 2.0)
        f_rep = 1.0 if rep <= 0.25 else max(0.0, 1.0 - (rep - 0.25) / 0.25)
        fluency = min(f_loss, f_rep)
    axes = (emotion, instruction, fluency)
    return 0.0 if 0.0 in axes else 3.0 / sum(1.0 / a for a in axes)


def test_score_from_stored_answers():
    texts = ["Sad.", "sad sad sad sad", "happy or sad", "", "zq vv kk", "The speaker sounds sad.", "angry"]
    token_ids = [[5, 6], [7, 7, 7, 7], [8, 9, 7], [], [1, 2, 3], [10, 11, 12, 7, 6], [13]]
    loss = np.array([3.0, 2.5, 4.0, np.nan, 9.5, 3.1, 3.2])
    parsed = np.array([answers.parse(t, LABELS) for t in texts])
    named = np.array([answers.named(t, LABELS) for t in texts])
    rep = np.array([score.repetition(t) for t in token_ids])
    assert rep.tolist() == [0.0, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert named.tolist() == [1, 1, 2, 0, 0, 1, 1]
    ref = score.reference(loss[[0, 6]])  # the clean answers: "Sad." and "angry"
    assert ref == pytest.approx(3.0 + 0.95 * 0.2)
    labels = np.array([0, 0, 0, 0, 0, 0, 1])  # every clip neutral but the last
    # Every answer toward every target: row t of [E, N] holds the answers steered toward t (here the same ones).
    got = score.toward(*(np.tile(x, (4, 1)) for x in (parsed, named, loss, rep)), labels, ref)
    for t in range(4):
        for n in range(len(texts)):
            want = np.nan if labels[n] == t else by_hand(parsed[n], named[n], loss[n], rep[n], t, ref)
            assert got["score"][t, n] == pytest.approx(want, nan_ok=True), (t, texts[n])
    assert got["score"][2, 0] == 1.0 and got["score"][2, 5] == 1.0  # fluent "sad" answers toward sad
    assert got["score"][2, 1] == 0.0 and got["score"][2, 2] == 0.0 and got["score"][2, 3] == 0.0
    assert (got["score"][:, 4][1:] == 0.0).all()  # gibberish
    loss[5] = 3.8  # 0.61 nats/token above the reference: fluency 1 − 0.61 / 2
    again = score.toward(*(np.tile(x, (4, 1)) for x in (parsed, named, loss, rep)), labels, ref)
    assert again["score"][2, 5] == pytest.approx(3 / (2 + 1 / (1 - (3.8 - ref) / 2)))
    assert score.harmonic(1.0, 1.0, 0.5) == pytest.approx(0.75)
    assert score.harmonic(1.0, 0.0, 1.0) == 0.0 and np.isnan(score.harmonic(np.nan, 1.0, 1.0))


def _free(scores_esn, damage_esn, scores_random, damage_random, labels):
    """A prepare()-shaped dict from per-α item scores [S, 1 + A, E, N] / [S, R, 1 + A, E, N] and damages."""
    axes = {"score": scores_esn, "emotion": scores_esn, "instruction": scores_esn, "fluency": scores_esn}
    rnd = {k: scores_random for k in axes}
    clean = {k: scores_esn[0, 0] for k in axes}
    return {"esn": axes, "random": rnd, "clean": clean, "damage": {"esn": damage_esn, "random": damage_random},
            "selection": score.halves(labels, 1)}


def test_alpha_is_chosen_on_the_selection_half():
    labels = np.repeat(np.arange(4), 6)
    sel = score.halves(labels, 1)
    assert np.array_equal(np.bincount(labels[sel]), [3] * 4) and sel.sum() == 12
    assert not np.array_equal(sel, score.halves(labels, 2))
    # α grid 0, 1, 2, 4: on the selection half α 2 is best; on the reported half α 4 would be.
    per_alpha_sel, per_alpha_rep = [0.0, 0.2, 0.6, 0.5], [0.0, 0.2, 0.3, 0.9]
    s = np.zeros((1, 4, 4, len(labels)))
    for a in range(4):
        s[0, a][:, sel], s[0, a][:, ~sel] = per_alpha_sel[a], per_alpha_rep[a]
    s[0][:, labels[None, :] == np.arange(4)[:, None]] = np.nan  # a clip is not steered toward its own label
    rnd = np.zeros((1, 1, 4, 4, len(labels)))
    prep = _free(s, np.array([[0.0, 0.1, 0.2, 0.4]]), rnd, np.array([[[0.0, 0.1, 0.2, 0.4]]]), labels)
    cfg = get_config("bootstrap=50,permutations=50")
    v = steering.selector_result(prep, 0, (0.0, 1.0, 2.0, 4.0), (0,), cfg)
    stored = v["selection"]
    best = max(range(1, 4), key=lambda a: (stored[a], -a))  # independent: argmax, ties to the smaller α
    assert v["chosen_alpha"] == 2.0 == (0.0, 1.0, 2.0, 4.0)[best]
    assert v["steering_score"] == pytest.approx(0.3)  # reported at the chosen α, not the reported half's best
    assert score.choose([0.5, 0.5, 0.2]) == 0 and score.choose([np.nan, 0.1]) == 1


@pytest.mark.parametrize("target,damage,alpha,within", [
    (0.3, [0.0, 0.2, 0.6, 1.0], 1.25, True),  # between α 1 and 2
    (0.0, [0.0, 0.2, 0.6, 1.0], 0.0, True),
    (1.5, [0.0, 0.2, 0.6, 1.0], 4.0, False),  # costlier than any control gain: its largest α
    (0.35, [0.0, 0.4, 0.3, 0.8], 0.875, True),  # not monotone: the first crossing walking up the grid
    (0.5, [0.0, 0.4, 0.3, 0.8], 2.8, True),
    (-0.1, [0.0, 0.2, 0.6, 1.0], 0.0, False)])
def test_matched_cost(target, damage, alpha, within):
    grid = np.array([0.0, 1.0, 2.0, 4.0])
    w, inside = score.matched(target, damage)
    assert inside == within and w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w @ grid == pytest.approx(alpha)
    if within:
        assert w @ np.asarray(damage) == pytest.approx(target)
        segment = next(i for i in range(3) if min(damage[i:i + 2]) <= target <= max(damage[i:i + 2]))
        f = np.interp(target, sorted(damage[segment:segment + 2]), [0.0, 1.0])
        f = f if damage[segment] <= damage[segment + 1] else 1 - f
        assert w @ grid == pytest.approx(grid[segment] + f * (grid[segment + 1] - grid[segment]))


def test_matched_control_interpolates_each_item():
    labels = np.repeat(np.arange(4), 2)
    rng = np.random.default_rng(0)
    rnd = rng.random((1, 2, 3, 4, len(labels)))
    prep = _free(rng.random((1, 3, 4, len(labels))), np.array([[0.0, 0.5, 1.0]]), rnd,
                 np.array([[[0.0, 0.25, 0.75], [0.0, 2.0, 4.0]]]), labels)
    m = steering.matched_control(prep, 0, 0, 1)  # the ESNs' damage at α index 1: 0.5, between 0.25 and 0.75
    assert m["within"] and m["damage"] == pytest.approx(0.5)
    assert np.allclose(m["items"]["score"], 0.5 * rnd[0, 0, 1] + 0.5 * rnd[0, 0, 2])
    m = steering.matched_control(prep, 0, 1, 1)
    assert np.allclose(m["items"]["score"], 0.75 * rnd[0, 1, 0] + 0.25 * rnd[0, 1, 1])


def test_diffmean_from_stored_statistics():
    rng = np.random.default_rng(1)
    stats = esn_jax.EmotionStats.zeros(3, 2, 5).replace(
        sum=rng.normal(size=(3, 2, 5)).astype(np.float32), tokens=np.array([4, 10, 6], np.int32))
    got = steering.diffmean(stats)
    total, tokens = np.asarray(stats.sum, np.float64), [4, 10, 6]
    for e in range(3):
        others = [f for f in range(3) if f != e]
        want = total[e] / tokens[e] - sum(total[f] for f in others) / sum(tokens[f] for f in others)
        assert np.allclose(got[e], want)
    masks = steering.diffmean_masks(np.array([[[[1, 0, 0, 0, 0], [0] * 5]] * 3, [[[0, 1, 0, 0, 0], [0] * 5]] * 3],
                                             bool))
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
    loss = dict(zip(said, steering.frame_loss(mini.module, mini.params, mini.tokenizer, said, mini.question),
                    strict=True))
    ref = score.reference([loss[t] for t in clean])
    rows = np.asarray(ids).reshape(-1, ids.shape[-1])
    reps = [score.repetition([t for t in row[:n] if t not in stop]) for row, n in
            zip(rows, np.asarray(lengths).reshape(-1), strict=True)]
    fluency = [float(score.fluency(loss.get(t, np.nan), r, ref)) for t, r in zip(texts, reps, strict=True)]
    assert fluency[:2] == [1.0, 1.0] and fluency[2:] == [0.0, 0.0], (texts, fluency)
    assert jax.numpy.isfinite(np.asarray(list(loss.values()))).all()
