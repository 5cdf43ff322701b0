"""Weight conversion as one declarative table: Hugging Face key pattern -> our parameter path + transform.

The engine checks the whole table against the checkpoint before reading any tensor and raises one
:class:`ConversionError` that lists every missing, unexpected and wrong-shape key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

LAYER = "{layer}"


def transpose(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
    return w.T


def identity(w: np.ndarray) -> np.ndarray:
    return w


LINEAR = {"transform": transpose, "inverse": transpose}  # a torch Linear weight, both ways


@dataclasses.dataclass(frozen=True)
class Rule:
    """``hf`` may contain ``{layer}``: the per-layer tensors are stacked on our leading layer axis.

    ``transform`` maps the checkpoint's tensor to ours; ``inverse`` maps ours back (for export).
    """

    hf: str
    path: str
    transform: Callable[[np.ndarray], np.ndarray] = identity
    inverse: Callable[[np.ndarray], np.ndarray] = identity

    def regex(self) -> re.Pattern:
        """``{layer}`` matches a layer index; ``*`` (used by ignore patterns) matches any run of characters."""
        pattern = re.escape(self.hf).replace(re.escape(LAYER), r"(\d+)").replace(r"\*", ".*")
        return re.compile(pattern + r"\Z")


class ConversionError(ValueError):
    """The checkpoint does not match the port; the message lists every mismatch."""


def decoder_rules(hf_model: str = "model", hf_head: str = "lm_head", path: str = "",
                  biases: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")) -> tuple[Rule, ...]:
    """The Qwen2/Llama decoder's table. ``hf_model``/``hf_head`` are the checkpoint's prefixes (e.g.
    ``thinker.model``); ``path`` is where the decoder sits in our tree (e.g. ``language_model/``);
    ``biases`` the attention projections that have one (:func:`attention_biases`): a bias of any other
    in the checkpoint is reported as unexpected."""
    layer = f"{hf_model}.layers.{LAYER}"
    ours = f"{path}model/layers"
    rules = [
        Rule(f"{hf_model}.embed_tokens.weight", f"{path}model/embed_tokens/embedding"),
        Rule(f"{hf_model}.norm.weight", f"{path}model/norm/scale"),
        Rule(f"{hf_head}.weight", f"{path}lm_head/kernel", **LINEAR),
    ]
    for norm in ("input_layernorm", "post_attention_layernorm"):
        rules.append(Rule(f"{layer}.{norm}.weight", f"{ours}/{norm}/scale"))
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        rules.append(Rule(f"{layer}.self_attn.{proj}.weight", f"{ours}/self_attn/{proj}/kernel", **LINEAR))
        if proj in biases:
            rules.append(Rule(f"{layer}.self_attn.{proj}.bias", f"{ours}/self_attn/{proj}/bias"))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        rules.append(Rule(f"{layer}.mlp.{proj}.weight", f"{ours}/mlp/{proj}/kernel", **LINEAR))
    return tuple(rules)


def attention_biases(config) -> tuple[str, ...]:
    """The attention projections of a :class:`ports.config.DecoderConfig` that carry a bias."""
    qkv = ("q_proj", "k_proj", "v_proj") if config.attention_bias else ()
    return qkv + (("o_proj",) if config.o_proj_bias else ())


def _shape_after(transform, shape) -> tuple[int, ...]:
    # A zero-stride stand-in gives the transformed shape without reading or allocating the tensor.
    return transform(np.broadcast_to(np.zeros((), np.uint8), shape)).shape


def convert_tensors(ckpt, rules: Sequence[Rule], expected: Mapping[str, tuple],
                    dtype, ignore: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Maps checkpoint tensors onto our flat ``{path: array}`` tree of shapes ``expected``.

    ``ckpt``: a reader with ``source``, ``keys()``, ``shape(key)`` and ``read(key)`` (safetensors, GGUF,
    CTranslate2).

    A rule whose ``path`` our model lacks (the lm_head of a tied model) makes its key optional and
    unused. ``ignore`` holds key patterns (``{layer}`` allowed) that are known and carry nothing.
    """
    active = [r for r in rules if r.path in expected]
    problems = [f"no rule fills {p}" for p in sorted(set(expected) - {r.path for r in active})]
    plan: dict[str, list[str]] = {}
    for r in active:
        shape = expected[r.path]
        if LAYER in r.hf:
            plan[r.path] = [r.hf.replace(LAYER, str(i)) for i in range(shape[0])]
        else:
            plan[r.path] = [r.hf]
    wanted = {k for keys in plan.values() for k in keys}
    present = set(ckpt.keys())
    known = [r.regex() for r in rules] + [Rule(p, "").regex() for p in ignore]
    missing = sorted(wanted - present)
    unexpected = sorted(k for k in present - wanted if not any(rx.match(k) for rx in known)
                        or _layer_beyond(k, active, expected))
    problems += [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
    for r in active:
        per_key = expected[r.path][1:] if LAYER in r.hf else expected[r.path]
        for k in plan[r.path]:
            if k in present and (got := _shape_after(r.transform, ckpt.shape(k))) != tuple(per_key):
                problems.append(f"wrong shape {k}: {ckpt.shape(k)} becomes {got} at {r.path}, expected {per_key}")
    if problems:
        raise ConversionError(f"{ckpt.source}: {len(problems)} mismatches with the port:\n  "
                              + "\n  ".join(problems))
    out = {}
    for r in active:
        tensors = [r.transform(ckpt.read(k)).astype(dtype) for k in plan[r.path]]
        out[r.path] = np.stack(tensors) if LAYER in r.hf else tensors[0]
    return out


def export_tensors(rules: Sequence[Rule], flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`convert_tensors`: our flat ``{path: array}`` tree -> checkpoint tensors."""
    out = {}
    for r in rules:
        if r.path not in flat:
            continue
        value = np.asarray(flat[r.path])
        if LAYER in r.hf:
            out.update({r.hf.replace(LAYER, str(i)): r.inverse(v) for i, v in enumerate(value)})
        else:
            out[r.hf] = r.inverse(value)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _layer_beyond(key: str, active: Sequence[Rule], expected: Mapping[str, tuple]) -> bool:
    """True for a per-layer key whose index is past the configured number of layers."""
    for r in active:
        if LAYER in r.hf and (m := r.regex().match(key)):
            return int(m.group(1)) >= expected[r.path][0]
    return False
