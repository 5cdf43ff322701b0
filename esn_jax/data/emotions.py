"""One emotion vocabulary for every corpus, with each corpus's documented mapping into it.

Cross-dataset transfer compares like with like only if "happy" means the same class everywhere, so every
builder stores three label views of an utterance:

* ``label``: the corpus's own label string, as released (``"exc"``, ``"joy"``, ``"H"``, ``"HAP"``, ...);
* ``emotion``: its index in :data:`EMOTIONS` (the full-class view);
* ``emotion4``: its index in :data:`FOUR` (neutral, happy, sad, angry: the usual 4-class subset), or -1.

The first four entries of :data:`EMOTIONS` are :data:`FOUR`, so ``emotion4 == emotion`` wherever it is not -1.
New classes are appended, never inserted, so that an existing class keeps its index: ``boredom`` (EmoDB's
Langeweile, which no other corpus has) is the last entry, its own class in the full view and absent (-1)
from the four-class view.
Labels a corpus marks as "no agreement" or "other" are excluded (counted in the build summary, never
guessed); a label that is in neither table is reported as unknown.
"""

from __future__ import annotations

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt", "calm", "frustrated",
            "boredom")
FOUR = EMOTIONS[:4]

# corpus -> {released label: unified emotion}. Merges are deliberate and documented here only:
# IEMOCAP excited -> happy (the usual 4-class protocol), MELD joy -> happy, RAVDESS fearful -> fear.
MAPPINGS: dict[str, dict[str, str]] = {
    "iemocap": {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry", "sur": "surprise",
                "fea": "fear", "dis": "disgust", "fru": "frustrated"},
    "meld": {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry", "surprise": "surprise",
             "fear": "fear", "disgust": "disgust"},
    "msp_podcast": {"N": "neutral", "H": "happy", "S": "sad", "A": "angry", "U": "surprise", "F": "fear",
                    "D": "disgust", "C": "contempt"},
    "crema_d_local": {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry", "FEA": "fear", "DIS": "disgust"},
    # RAVDESS codes from the file name's third field.
    "ravdess": {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
                "07": "disgust", "08": "surprise"},
    "esd": {"Neutral": "neutral", "Happy": "happy", "Sad": "sad", "Angry": "angry", "Surprise": "surprise"},
    # EmoDB's German initials from the file name: W Wut/Ärger, F Freude, T Trauer, N neutral, A Angst, E Ekel,
    # L Langeweile (boredom: its own class, see the module docstring).
    "emodb": {"W": "angry", "F": "happy", "T": "sad", "N": "neutral", "A": "fear", "E": "disgust", "L": "boredom"},
    "synthetic_prosody": {e: e for e in FOUR},
}

# corpus -> {released label: why it carries no emotion class}. These are skipped, with the reason.
EXCLUDED: dict[str, dict[str, str]] = {
    "iemocap": {"xxx": "no majority among the annotators", "oth": "annotated 'other'"},
    "msp_podcast": {"X": "no agreement among the annotators", "O": "annotated 'other'"},
}


class LabelError(ValueError):
    """A released label that maps to no class. ``reason`` is ``excluded_label`` or ``unknown_label``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def unify(corpus: str, label: str) -> tuple[int, int]:
    """The (emotion, emotion4) indices of ``corpus``'s released ``label``; raises LabelError otherwise."""
    if label in EXCLUDED.get(corpus, {}):
        raise LabelError("excluded_label", f"label {label!r}: {EXCLUDED[corpus][label]}")
    mapping = MAPPINGS[corpus]
    if label not in mapping:
        raise LabelError("unknown_label", f"label {label!r} is not in the {corpus} mapping {sorted(mapping)}")
    emotion = mapping[label]
    return EMOTIONS.index(emotion), FOUR.index(emotion) if emotion in FOUR else -1
