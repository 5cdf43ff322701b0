"""Metrics over predictions and masks (numpy; they run once per experiment, outside jit).

Predictions and labels are int arrays [N] of class indices in [0, C); a prediction may also be
:data:`NO_CLASS` (-1): an answer that names none of the classes (a free-form answer the parser could not map),
wrong for every item and in no column of the confusion matrix. Recall of a class with no items is NaN and is
left out of UAR; every other undefined quantity is NaN too, never a silent 0.

Axes: N = items, C = classes (emotions), E = masks (one per emotion), A = α values, L, I as in ports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NO_CLASS = -1  # a prediction outside the classes


def confusion(labels, preds, num_classes: int) -> np.ndarray:
    """[C, C] counts; row = true label, column = prediction (predictions of no class are not counted)."""
    labels, preds = _pair(labels, preds, num_classes)
    out = np.zeros((num_classes, num_classes), np.int64)
    named = preds != NO_CLASS
    np.add.at(out, (labels[named], preds[named]), 1)
    return out


def recall(labels, preds, num_classes: int) -> np.ndarray:
    """Per-class recall [C]; NaN for a class without items."""
    cm = confusion(labels, preds, num_classes)
    support = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def accuracy(labels, preds) -> float:
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.size == 0:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be equal, non-empty shapes")
    return float(np.mean(labels == preds))


def uar(labels, preds, num_classes: int) -> float:
    """Unweighted average recall over the classes that have items."""
    return float(np.nanmean(recall(labels, preds, num_classes)))


def macro_f1(labels, preds, num_classes: int) -> float:
    """Mean F1 over classes that occur as a label or a prediction (F1 = 0 where precision + recall = 0)."""
    cm = confusion(labels, preds, num_classes).astype(np.float64)
    support = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    tp, predicted = np.diag(cm), cm.sum(0)
    occurs = (support + predicted) > 0
    f1 = 2 * tp[occurs] / (support[occurs] + predicted[occurs])
    return float(f1.mean())


def deactivation_matrix(labels, clean_preds, masked_preds, num_classes: int) -> np.ndarray:
    """Δ[e_mask, e_label] = recall(masked by e_mask's neurons) − recall(clean): [E, C].

    masked_preds [E, N]: predictions with each emotion's mask applied.
    """
    clean = recall(labels, clean_preds, num_classes)
    return np.stack([recall(labels, p, num_classes) - clean for p in np.asarray(masked_preds)])


def specificity(delta) -> dict[str, np.ndarray]:
    """From Δ [E, E]: ``self`` = Δ[e, e], ``cross`` = mean_{e'≠e} Δ[e, e'], ``specificity`` = self − cross.

    Each [E]. Deactivation lowers recall, so a targeted mask has a negative specificity.
    """
    delta = np.asarray(delta, np.float64)
    if delta.ndim != 2 or delta.shape[0] != delta.shape[1] or delta.shape[0] < 2:
        raise ValueError(f"delta must be square [E, E] with E >= 2; got {delta.shape}")
    off = ~np.eye(len(delta), dtype=bool)
    self_ = np.diag(delta)
    cross = np.array([np.nanmean(row[o]) for row, o in zip(delta, off, strict=True)])
    return {"self": self_, "cross": cross, "specificity": self_ - cross}


def steering_rate(labels, preds, target: int) -> float:
    """Share of items whose label is not ``target`` that are predicted as ``target`` (NaN if none)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    other = labels != target
    return float(np.mean(preds[other] == target)) if other.any() else float("nan")


def steering_curve(labels, preds_by_alpha, target: int) -> np.ndarray:
    """Steering rate toward ``target`` for each α: preds_by_alpha [A, N] -> [A]."""
    return np.array([steering_rate(labels, p, target) for p in np.asarray(preds_by_alpha)])


def bootstrap_ci(metric: Callable[..., float], *arrays, num_samples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, low, high): percentile bootstrap over items.

    ``metric(*arrays)`` with every array indexed [N, ...] along its first axis (resampled together).
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError("bootstrap needs non-empty arrays of one length")
    rng = np.random.default_rng(seed)
    samples = np.array([metric(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, (num_samples, n))])
    tail = (1 - level) / 2
    low, high = np.nanquantile(samples, [tail, 1 - tail])
    return float(metric(*arrays)), float(low), float(high)


def empirical_p(observed: float, null, alternative: str = "less") -> float:
    """P-value of ``observed`` against random-control values ``null`` [R]: (1 + #as-extreme) / (1 + R).

    alternative ``less``: the ESN effect is lower than random (e.g. a larger recall drop).
    """
    null = np.asarray(null, np.float64)
    if null.size == 0:
        raise ValueError("need at least one random-control value")
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater'; got {alternative!r}")
    extreme = null <= observed if alternative == "less" else null >= observed
    return float((1 + extreme.sum()) / (1 + null.size))


def paired_permutation_test(a, b, num_permutations: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that per-item scores a [N] and b [N] (e.g. correctness under the ESN mask and under
    its random control) have the same mean, by randomly swapping each pair."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError("a and b must be non-empty [N] arrays of one length")
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(num_permutations, diff.size))
    null = np.abs((signs * diff).mean(1))
    return float((1 + (null >= abs(diff.mean()) - 1e-12).sum()) / (1 + num_permutations))


def jaccard(a, b) -> float:
    """|a ∧ b| / |a ∨ b| of two bool masks of one shape; NaN when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks have different shapes {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def jaccard_matrix(a, b) -> np.ndarray:
    """Pairwise Jaccard of mask stacks a [E, L, I] and b [F, L, I] -> [E, F]."""
    return np.array([[jaccard(x, y) for y in np.asarray(b)] for x in np.asarray(a)])


def layer_histogram(mask) -> np.ndarray:
    """Selected neurons per layer: mask [..., L, I] -> [..., L]."""
    return np.asarray(mask, bool).sum(-1)


def _pair(labels, preds, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be [N] of one length")
    for name, x, low in (("labels", labels, 0), ("preds", preds, NO_CLASS)):
        if x.size and (x.min() < low or x.max() >= num_classes):
            raise ValueError(f"{name} must lie in [{low}, {num_classes})")
    return labels, preds
