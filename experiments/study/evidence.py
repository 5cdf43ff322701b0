"""What the study measured, as arrays: the stages' label log-probs and masks. Every number and verdict of
results.json is a function of an :class:`Evidence` (:mod:`experiments.study.analysis`,
:mod:`experiments.study.verdicts`), so the verdicts can be recomputed from ``predictions.npz`` and
``masks.npz`` alone, e.g. after perturbing every log-probability.

Shapes: P prompts, S selectors, K ks, R random seeds, E emotions, A alphas, N items, L layers, I neurons,
T plain-text prompts. Log-probs end in the label axis E; predictions are their argmax. In free-form mode
(``answer=generate``) the log-probs of a parsed answer are 0 for its label and −inf for the others, and −inf for
every label when the answer names none (:mod:`experiments.study.answers`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from esn_jax.metrics import NO_CLASS

# Two labels closer than this in log-probability are a near-tie: float differences between machines (about 1e-5)
# can flip such an item's prediction.
NEAR_TIE = 1e-4

# The log-prob fields, in the order the report lists them as stages (the transfer fields only with a second dataset).
LOGP_FIELDS = ("clean", "deactivate", "prompt_transfer", "steer", "steer_random", "agnostic", "transfer_clean",
               "transfer")
DICT_FIELDS = ("costs", "free")
COST_FIELDS = ("deactivate", "steer", "steer_random", "agnostic")


@dataclasses.dataclass(frozen=True)
class Evidence:
    labels: np.ndarray  # [N] emotion index of each evaluation item
    clean: np.ndarray  # [P, N, E]
    deactivate: np.ndarray  # [P, S, K, 1 + R, E, N, E]: every mask ablated (ESNs 0, random controls 1..R)
    steer: np.ndarray  # [P, S, A, E, N, E]: gain α on each emotion's ESNs at main k
    steer_random: np.ndarray  # [P, S, R, E, N, E]: gain at the largest α on each random control
    agnostic: np.ndarray  # [P, S, 2, A, N, E]: Union, Mix
    masks: np.ndarray  # bool [S, K, 1 + R, E, L, I], from the statistics pooled over prompts
    collateral_clean: np.ndarray  # [T] next-token loss on plain text
    collateral_masked: np.ndarray  # [S, K, 1 + R, E, T]
    unknown_share: float  # of the plain-text tokens, the tokenizer's unknown token's share
    prompt_masks: np.ndarray | None = None  # bool [P, S, E, L, I]: each prompt's own selection (P > 1)
    prompt_transfer: np.ndarray | None = None  # [P (under), P (selected on), S, E, N, E]
    transfer_labels: np.ndarray | None = None  # [N_B] the transfer dataset's items
    transfer_clean: np.ndarray | None = None  # [P, N_B, E]
    transfer: np.ndarray | None = None  # [P, S, 2, E, N_B, E]: the main masks, then B's own, ablated on B
    transfer_masks: np.ndarray | None = None  # bool [S, E, L, I]: selected on B
    # What each scored intervention costs at the answer position, beside its log-probs (COST_FIELDS): <field> [...,
    # N, 2] (KL(clean ‖ intervened), label mass) for the log-prob field of that name, "clean_mass" [P, N], and the
    # plain-text damage of Union and Mix, "agnostic_damage" [S, 2, A] (the ablations': collateral_masked).
    costs: dict[str, np.ndarray] | None = None
    # The free-form steering evaluation (experiments.study.steering.run_stage's arrays).
    free: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as predictions.npz stores them (log-prob fields as ``<field>_logp``, the dict fields' entries as
        ``<field>__<key>``); masks go to masks.npz."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or "masks" in f.name:
                continue
            if f.name in DICT_FIELDS:
                out.update({f"{f.name}__{k}": np.asarray(v) for k, v in value.items()})
            else:
                out[f"{f.name}_logp" if f.name in LOGP_FIELDS else f.name] = np.asarray(value)
        return out

    @classmethod
    def load(cls, predictions, masks) -> Evidence:
        """From the mappings of predictions.npz and masks.npz (see :meth:`arrays`)."""
        kw = {}
        for field in DICT_FIELDS:
            found = {k.split("__", 1)[1]: np.asarray(predictions[k]) for k in predictions if k.startswith(f"{field}__")}
            kw[field] = found or None
        for f in dataclasses.fields(cls):
            if f.name in DICT_FIELDS:
                continue
            key = f"{f.name}_logp" if f.name in LOGP_FIELDS else f.name
            source = masks if "masks" in f.name else predictions
            if key in source:
                kw[f.name] = np.asarray(source[key])
        kw["unknown_share"] = float(kw["unknown_share"])
        return cls(**kw)

    def with_logp(self, fn) -> Evidence:
        """A copy with ``fn(array)`` applied to every log-prob field."""
        return dataclasses.replace(self, **{f: fn(getattr(self, f)) for f in LOGP_FIELDS
                                            if getattr(self, f) is not None})


def preds(logp) -> np.ndarray | None:
    """The argmax label of each evaluation; :data:`esn_jax.metrics.NO_CLASS` where every label's log-prob is −inf
    (a free-form answer that names no label, see :mod:`experiments.study.answers`)."""
    if logp is None:
        return None
    logp = np.asarray(logp)
    return np.where(np.isneginf(logp).all(-1), NO_CLASS, logp.argmax(-1))


def near_ties(ev: Evidence) -> dict[str, dict]:
    """Per stage: how many (variant, item) evaluations have their top two labels within :data:`NEAR_TIE`."""
    out = {}
    for name in LOGP_FIELDS:
        logp = getattr(ev, name)
        if logp is None:
            continue
        top = np.sort(np.asarray(logp, np.float64), axis=-1)
        with np.errstate(invalid="ignore"):  # free-form answers: −inf − −inf for the labels not named
            close = (top[..., -1] - top[..., -2]) < NEAR_TIE
        out[name] = {"evaluations": int(close.size), "near_ties": int(close.sum()),
                     "share": float(close.mean())}
    return out


def esn_mask(path: str, selector: str, k: float, emotion: str, labels,
             dims: tuple[int, int] | None = None) -> np.ndarray:
    """The ESN mask [L, I] of ``selector`` at ``k`` for ``emotion`` (a label word or an index) from a study's
    masks.npz; a ValueError names the file and lists what it holds. labels: the model's label words (empty: the
    emotion must be an index); dims: the model's (L, I), checked when given."""
    try:
        z = np.load(path)
        masks, selectors, ks = z["masks"], [str(s) for s in z["selectors"]], [float(x) for x in z["ks"]]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"masks file {path} is not a study's masks.npz (masks, selectors, ks): {e}") from None
    if masks.ndim != 6 or masks.shape[:2] != (len(selectors), len(ks)):
        raise ValueError(f"masks file {path}: masks has shape {masks.shape}; expected [S={len(selectors)}, "
                         f"K={len(ks)}, 1 + R, E, L, I]")
    if selector not in selectors:
        raise ValueError(f"masks file {path} has no selector {selector!r}; it has {selectors}")
    found = [j for j, x in enumerate(ks) if math.isclose(x, k, rel_tol=1e-9)]
    if not found:
        raise ValueError(f"masks file {path} has no k={k:g}; it has k in {[float(f'{x:g}') for x in ks]}")
    if labels and masks.shape[3] != len(labels):
        raise ValueError(f"masks file {path} holds {masks.shape[3]} emotions but the model has {len(labels)} "
                         f"label words {list(labels)}: the study ran with other labels (set the labels to the study's)")
    e = int(emotion) if emotion.isdigit() else (labels.index(emotion) if emotion in labels else -1)
    if not 0 <= e < masks.shape[3]:
        raise ValueError(f"masks file {path} has no emotion {emotion!r}; it has {list(labels)} (or an index below "
                         f"{masks.shape[3]})")
    if dims is not None and masks.shape[-2:] != tuple(dims):
        raise ValueError(f"masks file {path} has masks over [L, I] = {list(masks.shape[-2:])} neurons but the "
                         f"model has {list(dims)}: it comes from a study of another model")
    return masks[selectors.index(selector), found[0], 0, e]  # 0: the ESNs, not a random control
