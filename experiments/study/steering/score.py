"""Free-form steering judged as control, not breakage: the score of one steered answer and the comparisons built on
it (AxBench's protocol, Wu et al. 2025, with automatic axes: no judge model is available offline).

The rules and thresholds below were fixed (committed) before any result of them was seen.

**One answer** to a clip, written greedily by the model under an intervention that steers toward emotion ``t``
(only clips whose label is not ``t`` are scored toward ``t``), gets three axes in [0, 1]:

- *emotion*: 1 when the study's parser (:mod:`experiments.study.answers`) reads ``t`` from it, else 0;
- *instruction*: 1 when it is a label answer, naming exactly one distinct label (the parser's words and synonyms),
  else 0 — an answer naming two emotions, or none, does not do what the question asked;
- *fluency*: ``min(f_loss, f_rep)``, 0 for an empty answer. ``f_loss`` reads the unedited language model's mean
  per-token loss of the answer's text after the question, as plain text without the audio (:data:`FRAME`): it
  judges whether the text is a sensible answer to the question, not whether it agrees with the clip, so a fluent
  answer naming another emotion is not penalised:
  1 up to the 95th percentile of the clean answers' losses under the same prompt (the clean model's own answers to
  the same clips: :data:`REFERENCE_QUANTILE`), falling linearly to 0 at :data:`LOSS_MARGIN` nats/token above it.
  ``f_rep`` reads the repetition rate ``1 − distinct tokens / tokens`` of the answer's tokens (decoding blocks no
  repetition): 1 up to :data:`REPETITION_FREE`, falling linearly to 0 at :data:`REPETITION_BROKEN`.

Its **steering score** is the harmonic mean of the three axes, 0 when any axis is 0 (AxBench's aggregate).

**α is chosen on held-out items**: the free-form items are split in two halves, stratified by label and seeded
(:func:`halves`); per steering row (a selector's ESNs, a DiffMean row) the α with the best mean score on the
*selection* half is chosen (ties: the smaller α), and every number is reported on the other half.

**Matched cost**: a random control is compared at the α whose plain-text damage equals the ESNs' damage at their
chosen α (:func:`matched`): linear interpolation along the control's α grid, whose first point is α = 0 (the
unedited model: damage 0, its clean answers' scores).

Shapes: A α values (of one row's grid), E emotions (targets), N items.
"""

from __future__ import annotations

import warnings

import numpy as np

FRAME = "Question: {question}\nAnswer:"  # the text the answer is scored after (a space joins them)
REFERENCE_QUANTILE = 0.95
LOSS_MARGIN = 2.0  # nats/token above the clean reference at which f_loss reaches 0
REPETITION_FREE, REPETITION_BROKEN = 0.25, 0.5
SPLIT_SEED = 1  # the held-out split's seed, offset from the study's (cfg.seed + SPLIT_SEED)
RULE = ("Steering score (fixed before any result of it): per answer steered toward an emotion t (clips labelled t "
        "are not scored toward t), the harmonic mean of three axes, 0 when any is 0 — emotion (the parser reads t), "
        "instruction (the answer names exactly one label) and fluency (the smaller of a loss term — the unedited "
        "LM's per-token loss of the answer after “Question: <the question>↵Answer:” as plain text without the "
        f"audio, full up to the {REFERENCE_QUANTILE:.0%} quantile of the clean answers' losses and 0 at "
        f"{LOSS_MARGIN:g} nats/token above it — and a repetition term — 1 − distinct/all tokens, full up to "
        f"{REPETITION_FREE:g}, 0 from {REPETITION_BROKEN:g}). α is chosen per row on one half of the items "
        "(stratified, seeded) and everything is reported on the other half; random controls are compared at matched "
        "cost (their α whose plain-text damage equals the ESNs', interpolated over their grid from α = 0).")


def harmonic(*axes) -> np.ndarray:
    """The harmonic mean of the axes (broadcast), 0 where any axis is 0; NaN stays NaN (an answer not scored)."""
    stacked = np.stack(np.broadcast_arrays(*[np.asarray(a, np.float64) for a in axes]))
    with np.errstate(divide="ignore"):
        out = len(axes) / np.sum(1.0 / stacked, axis=0)
    return np.where(np.isnan(stacked).any(0), np.nan, np.where((stacked == 0).any(0), 0.0, out))


def repetition(tokens) -> float:
    """1 − distinct / all of an answer's token ids (0 for fewer than two tokens)."""
    tokens = list(tokens)
    return 0.0 if len(tokens) < 2 else 1.0 - len(set(tokens)) / len(tokens)


def reference(clean_losses) -> float:
    """The clean answers' loss quantile that fluency is measured against (NaN losses, empty answers, left out)."""
    losses = np.asarray(clean_losses, np.float64)
    losses = losses[~np.isnan(losses)]
    return float(np.quantile(losses, REFERENCE_QUANTILE)) if losses.size else float("nan")


def fluency(loss, rep, ref: float) -> np.ndarray:
    """min(f_loss, f_rep) per answer; loss NaN (an empty answer) gives 0, and so does a NaN reference (no clean answer
    to measure against)."""
    loss, rep = np.asarray(loss, np.float64), np.asarray(rep, np.float64)
    f_loss = np.nan_to_num(np.clip((ref + LOSS_MARGIN - loss) / LOSS_MARGIN, 0.0, 1.0), nan=0.0)
    f_rep = np.clip((REPETITION_BROKEN - rep) / (REPETITION_BROKEN - REPETITION_FREE), 0.0, 1.0)
    return np.where(np.isnan(loss), 0.0, np.minimum(f_loss, f_rep))


def axes(parsed, named, loss, rep, target: int, ref: float) -> dict[str, np.ndarray]:
    """The axes and score of answers [...] steered toward ``target``."""
    emotion = (np.asarray(parsed) == target).astype(np.float64)
    instruction = (np.asarray(named) == 1).astype(np.float64)
    flu = fluency(loss, rep, ref)
    return {"emotion": emotion, "instruction": instruction, "fluency": flu,
            "score": harmonic(emotion, instruction, flu)}


def toward(parsed, named, loss, rep, labels, ref: float) -> dict[str, np.ndarray]:
    """Answers [..., E, N] where row t was steered toward target t -> each axis and the score [..., E, N], NaN where
    the clip's label is t (a clip is not steered toward its own emotion)."""
    parsed = np.asarray(parsed)
    e = parsed.shape[-2]
    out = {k: np.empty(parsed.shape, np.float64) for k in ("emotion", "instruction", "fluency", "score")}
    for t in range(e):
        one = axes(parsed[..., t, :], np.asarray(named)[..., t, :], np.asarray(loss)[..., t, :],
                   np.asarray(rep)[..., t, :], t, ref)
        for k, v in one.items():
            out[k][..., t, :] = np.where(np.asarray(labels) == t, np.nan, v)
    return out


def halves(labels, seed: int) -> np.ndarray:
    """bool [N]: True for the selection half — within each label, a seeded shuffle's first ⌊n/2⌋ items; the rest
    (the larger half when n is odd) is the reported half."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    selection = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        selection[idx[:len(idx) // 2]] = True
    return selection


def mean_score(score) -> np.ndarray:
    """Scores [..., E, N] -> the mean over every scored (target, item) pair [...]."""
    score = np.asarray(score, np.float64)
    flat = score.reshape(*score.shape[:-2], -1)
    if not flat.shape[-1]:
        return np.full(flat.shape[:-1], np.nan)
    with warnings.catch_warnings():  # a row without any scored pair is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(flat, -1)


def choose(per_alpha) -> int:
    """The index of the best mean score over α [A] (the selection half's); ties go to the smaller α, which comes
    first in the grid."""
    values = np.asarray(per_alpha, np.float64)
    if np.isnan(values).all():
        return 0
    return int(np.flatnonzero(values == np.nanmax(values))[0])


def matched(target_damage: float, damage) -> tuple[np.ndarray, bool]:
    """Weights over a control's grid [A0] (α = 0 first) that interpolate it to ``target_damage``: linear between the
    first two consecutive grid points whose damages bracket it, walking up the grid. -> (weights [A0] summing to 1,
    within): ``within`` is False when no segment brackets it (the nearest end of the grid is used: the control's
    largest α when the ESNs cost more than any of its gains, α = 0 when they cost less than nothing)."""
    damage = np.asarray(damage, np.float64)
    w = np.zeros(len(damage))
    for i in range(len(damage) - 1):
        lo, hi = damage[i], damage[i + 1]
        if min(lo, hi) <= target_damage <= max(lo, hi):
            f = 0.0 if hi == lo else (target_damage - lo) / (hi - lo)
            w[i], w[i + 1] = 1.0 - f, f
            return w, True
    w[-1 if target_damage > damage.max() else int(np.argmin(damage))] = 1.0
    return w, False


def reliability(steered, clean) -> dict[str, float | None]:
    """Per (target, item) pair [..., E, N]: the share whose steering score rose (``toward``), stayed (``unchanged``)
    or fell (``away``) from the clean answer's, over the pairs scored (NaN pairs left out)."""
    steered, clean = np.broadcast_arrays(np.asarray(steered, np.float64), np.asarray(clean, np.float64))
    ok = ~(np.isnan(steered) | np.isnan(clean))
    n = int(ok.sum())
    if not n:
        return {"toward": None, "unchanged": None, "away": None}
    diff = (steered - clean)[ok]
    return {"toward": float((diff > 1e-12).sum() / n), "unchanged": float((np.abs(diff) <= 1e-12).sum() / n),
            "away": float((diff < -1e-12).sum() / n)}
