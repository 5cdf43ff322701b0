"""Free-form answers (``answer=generate``): what the model wrote, mapped to a label word.

The parser, fixed before any free-form result was seen: an answer names the label whose word, or one of the
word's synonyms in :data:`SYNONYMS`, occurs first in it, matched case-insensitively as a whole word ("Sad." names
sad; "sadly" names nothing, "sadness" names sad as a listed synonym). An answer that names
none is *unparsed*: it stays in every count as a wrong answer of no label (:data:`esn_jax.metrics.NO_CLASS`) and
the unparsed rate is reported, never dropped.

Shapes: V variants, B prompts, N generated tokens, E labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from esn_jax.metrics import NO_CLASS

RULE = ("the label whose word or listed synonym occurs first in the answer, case-insensitive, whole words; "
        "otherwise unparsed (counted wrong, reported)")

# Other words an answer may use for a label word (keys: the label words of esn_jax.data.emotions and its views).
SYNONYMS = {
    "neutral": ("calm", "neutrality", "no emotion", "emotionless", "indifferent"),
    "happy": ("happiness", "joy", "joyful", "glad", "cheerful", "excited", "excitement", "delighted"),
    "sad": ("sadness", "unhappy", "sorrow", "sorrowful", "upset", "depressed"),
    "angry": ("anger", "mad", "furious", "annoyed", "irritated", "rage"),
    "fear": ("fearful", "afraid", "scared", "frightened", "anxious"),
    "disgust": ("disgusted", "disgusting"),
    "surprise": ("surprised", "astonished", "amazed"),
    "frustrated": ("frustration",),
    "contempt": ("contemptuous",),
    "calm": ("relaxed",),
}


def patterns(labels: Sequence[str]) -> list[tuple[re.Pattern, int]]:
    """(whole-word regex, label index) for every label word and its synonyms."""
    out = []
    for j, word in enumerate(labels):
        for form in (word, *SYNONYMS.get(word.lower(), ())):
            if form.lower() in (w.lower() for w in labels) and form.lower() != word.lower():
                continue  # a synonym that is itself a label word belongs to that label
            out.append((re.compile(rf"(?<![\w]){re.escape(form)}(?![\w])", re.IGNORECASE), j))
    return out


def parse(text: str, labels: Sequence[str]) -> int:
    """The index of the label the answer names first, or :data:`NO_CLASS`."""
    found = [(m.start(), j) for pattern, j in patterns(labels) if (m := pattern.search(text))]
    return min(found)[1] if found else NO_CLASS


def named(text: str, labels: Sequence[str]) -> int:
    """How many distinct labels the answer names (by the same words and synonyms as :func:`parse`)."""
    return len({j for pattern, j in patterns(labels) if pattern.search(text)})


def as_logp(parsed, num_labels: int) -> np.ndarray:
    """Parsed labels [...] -> pseudo log-probs [..., E]: 0 for the named label, −inf for the others (all −inf when
    the answer named none), so that the study's argmax reads the parsed label back."""
    parsed = np.asarray(parsed)
    return np.where(parsed[..., None] == np.arange(num_labels), 0.0, -np.inf).astype(np.float32)


def decode(tokenizer, ids, lengths) -> list[str]:
    """Texts of generated ids [..., N] with lengths [...] (the stop token and special tokens left out), flattened."""
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    rows = ids.reshape(-1, ids.shape[-1])
    return [tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            for row, n in zip(rows, lengths.reshape(-1), strict=True)]
