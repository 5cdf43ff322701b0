"""The free-form answer parser: which label an answer names, and how the study reads it back."""

import numpy as np
import pytest

from esn_jax.metrics import NO_CLASS
from experiments.study import answers
from experiments.study.evidence import preds

LABELS = ("neutral", "happy", "sad", "angry")


@pytest.mark.parametrize("text, expected", [
    ("Happy.", "happy"),
    ("happy", "happy"),
    ("ANGRY!", "angry"),
    ("The speaker sounds sad, not angry.", "sad"),  # the first label named wins
    ("Not angry but sad", "angry"),
    ("I hear sadness in the voice", "sad"),  # a listed synonym
    ("They are furious", "angry"),
    ("calm", "neutral"),
    ("unhappy", "sad"),  # a synonym of sad, not the word happy inside it
    ("sadly, yes", None),  # not a whole word
    ("happyish", None),
    ("I cannot tell", None),
    ("", None),
    ("<neutral>", "neutral"),
])
def test_parse(text, expected):
    got = answers.parse(text, LABELS)
    assert (None if got == NO_CLASS else LABELS[got]) == expected


def test_a_synonym_that_is_a_label_belongs_to_that_label():
    labels = ("calm", "neutral")  # "calm" is a synonym of neutral, but here it is a label of its own
    assert answers.parse("calm", labels) == 0
    assert answers.parse("neutral", labels) == 1


def test_pseudo_log_probs_read_back_as_the_parsed_labels():
    parsed = np.array([[0, 3, NO_CLASS], [2, NO_CLASS, 1]])
    logp = answers.as_logp(parsed, 4)
    assert logp.shape == (2, 3, 4)
    np.testing.assert_array_equal(preds(logp), parsed)
    assert (logp[0, 1] == [-np.inf, -np.inf, -np.inf, 0]).all()
    assert np.isneginf(logp[0, 2]).all()


def test_decode_stops_at_each_length():
    class Tokenizer:
        def decode(self, ids, skip_special_tokens):
            assert skip_special_tokens
            return " ".join(map(str, ids))

    ids = np.array([[[5, 6, 7], [8, 9, 9]]])
    assert answers.decode(Tokenizer(), ids, np.array([[2, 3]])) == ["5 6", "8 9 9"]
