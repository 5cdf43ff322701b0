"""The questions the mini-LALM's projector is trained under, and the wordings kept out of training.

Real LALMs are instruction-tuned over many wordings of a task (Audio Flamingo 3 and Qwen2-Audio train on mixtures
of question templates), and emotion benchmarks score several prompts. The mini-LALM's training draws, for every
training row, one wording of :data:`POOL`, an order of the label words and a way of listing them
(:data:`SEPARATORS`); the answer is the label word alone, or a short sentence holding it (:data:`SENTENCES`) when
the wording asks for a sentence, and always ends with the chat's end-of-turn token.

Never in the pool (a test checks it): the study's own reworded prompts (``configs.study.PROMPTS``: ``which``,
``listen``) and the :data:`HELD_OUT` family, on which ``python -m experiments.evaluate --held_out`` measures how
the model answers wordings it never saw. Templates hold ``{labels}``, the listed label words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

WORD, SENTENCE = "word", "sentence"


@dataclasses.dataclass(frozen=True)
class Wording:
    """A question template and the answer form it asks for (:data:`WORD` or :data:`SENTENCE`)."""

    template: str
    answer: str = WORD


# The first is the study's ``asked`` prompt (the question of reference.json); asking it is most common in training.
ASKED = "What emotion does the speaker express? Answer with one word: {labels}."
POOL = (
    Wording(ASKED),
    Wording("What is the emotion in this recording? Answer with one word: {labels}."),
    Wording("Tell me the speaker's emotion in one word ({labels})."),
    Wording("Emotion of the speaker? One word from {labels}."),
    Wording("Which of these emotions fits the voice best: {labels}? Answer with just the word."),
    Wording("Choose the emotion that matches the speaker's tone: {labels}. Respond with one word."),
    Wording("Label the emotion of this audio clip as one of {labels}. Output only the label."),
    Wording("Is the person speaking {labels}? Give a one-word answer."),
    Wording("Categorize the speaker's mood. Options: {labels}. Answer in one word."),
    Wording("Detect the emotion conveyed by the speech. Possible answers: {labels}. Only one word, please."),
    Wording("What feeling comes across in this speech? Pick one word among {labels}."),
    Wording("Emotion recognition. Classes: {labels}. Answer:"),
    Wording("What emotion do you perceive in this clip: {labels}?"),
    Wording("Which emotion is expressed here, {labels}?"),
    Wording("How would you describe the speaker's emotional state? The options are {labels}."),
    Wording("Determine whether the speaker is {labels}."),
    Wording("In a short sentence, describe the speaker's emotion ({labels}).", SENTENCE),
    Wording("Describe how the speaker feels in one sentence, using one of these words: {labels}.", SENTENCE),
    Wording("Answer in a full sentence: what emotion does the voice express? Options: {labels}.", SENTENCE),
    Wording("Write a brief sentence about the emotion you perceive ({labels}).", SENTENCE),
)
# Wordings no training row uses, asked for one word in the label order given (evaluation only).
HELD_OUT = (
    "How does the speaker feel? Pick one: {labels}.",
    "Classify the emotional tone of this recording as {labels}. One word only.",
    "From the voice alone, would you say the speaker is {labels}?",
    "Identify the speaker's emotion and reply with a single label from {labels}.",
)
# Ways of listing the label words: "a, b, c or d", "a, b, c, d", "a / b / c / d".
SEPARATORS = ((", ", " or "), (", ", ", "), (" / ", " / "))
SENTENCES = ("The speaker sounds {label}.", "The voice sounds {label}.", "The speaker seems {label}.")
ASKED_SHARE = 0.25  # of the rows ask ASKED itself (the rest draw uniformly from the whole pool)


def word_list(words: Sequence[str], separator: tuple[str, str] = SEPARATORS[0]) -> str:
    """``a, b, c or d`` (or another of :data:`SEPARATORS`)."""
    sep, last = separator
    return sep.join(words[:-1]) + last + words[-1] if len(words) > 1 else words[0]


def fill(template: str, labels: Sequence[str]) -> str:
    """The question of ``template`` with ``labels`` listed in the given order, ``a, b, c or d``."""
    return template.format(labels=word_list(labels))


def draw(rng: np.random.Generator, labels: Sequence[str], label: int) -> tuple[str, str]:
    """One training row's (question, answer text): a wording of :data:`POOL`, a random order and listing of the
    label words, and the answer to it for the row's ``label`` (index into ``labels``)."""
    wording = POOL[0] if rng.random() < ASKED_SHARE else POOL[rng.integers(len(POOL))]
    if wording.template == ASKED and rng.random() < 0.5:
        words = list(labels)  # the asked prompt as the study asks it, in the labels' own order
        separator = SEPARATORS[0]
    else:
        words = [labels[i] for i in rng.permutation(len(labels))]
        separator = SEPARATORS[rng.integers(len(SEPARATORS))]
    question = wording.template.format(labels=word_list(words, separator))
    word = labels[label]
    answer = SENTENCES[rng.integers(len(SENTENCES))].format(label=word) if wording.answer == SENTENCE else word
    return question, answer


def describe() -> dict:
    """The pool as ``reference.json`` records it."""
    return {"pool": [dataclasses.asdict(w) for w in POOL], "held_out": list(HELD_OUT),
            "separators": [list(s) for s in SEPARATORS], "sentences": list(SENTENCES), "asked_share": ASKED_SHARE}


def held_out_questions(labels: Sequence[str]) -> tuple[str, ...]:
    """The :data:`HELD_OUT` wordings, the label words in their own order."""
    return tuple(fill(t, labels) for t in HELD_OUT)


__all__ = ["ASKED", "HELD_OUT", "POOL", "SENTENCES", "SEPARATORS", "Wording", "describe", "draw", "fill",
           "held_out_questions", "word_list"]
