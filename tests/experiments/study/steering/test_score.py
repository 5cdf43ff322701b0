"""The steering score of one answer against an independent computation written here: the harmonic mean of the three
axes from stored answers (parse, labels named, frame loss, repetition)."""

import math

import numpy as np
import pytest

from experiments.study import answers
from experiments.study.steering import score

LABELS = ("neutral", "happy", "sad", "angry")


def by_hand(parsed, named, loss, rep, target, ref):
    """One answer's score toward ``target``, written out from the rule in steering.score's docstring."""
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
