"""Shared helpers of the LALM port tests: torch weights through our rule tables, tiny configs."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

import ports
from ports.models import abstract_params
from ports.rules import convert_tensors


class StateDictCheckpoint:
    """A torch ``state_dict`` behind the reading interface of ``SafetensorsCheckpoint``."""

    directory = "<state_dict>"

    def __init__(self, state_dict, prefix: str = ""):
        self.tensors = {prefix + k: v.detach().float().numpy() for k, v in state_dict.items()}

    def keys(self):
        return sorted(self.tensors)

    def shape(self, key):
        return self.tensors[key].shape

    def read(self, key):
        return self.tensors[key]


def params_from_torch(module, init_kwargs, rules, state_dict, prefix="", ignore=()):
    """Our params for ``module`` filled from a torch ``state_dict`` through the declarative ``rules``."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), **init_kwargs))["params"]
    expected = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(abstract).items()}
    ckpt = StateDictCheckpoint(state_dict, prefix)
    flat = convert_tensors(ckpt, rules, expected, np.float32, ignore=ignore)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


FIXTURES = Path(__file__).resolve().parents[2] / "configs" / "models"  # the real 7B configs (DESIGN §3)


def count_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def hf_param_count(model_cls, config) -> dict[str, int]:
    """{parameter name: size} of a transformers model built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = model_cls(config)
    return {k: p.numel() for k, p in model.named_parameters()}


def hf_logits(model, inputs):
    """transformers' logits [B, T, V] for numpy ``inputs`` (token ids as int64)."""
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v, dtype=torch.long if k == "input_ids" else None)
                        for k, v in inputs.items()}).logits.numpy()


def our_logits(module, params, inputs):
    """Our port's logits [B, T, V] for the same numpy ``inputs``."""
    return np.asarray(module.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()}))


def max_diff_to_transformers(hf, module, params, inputs):
    """max |Δlogits| over the real (unpadded) positions."""
    real = inputs["attention_mask"].astype(bool)
    return max_abs_diff(our_logits(module, params, inputs)[real], hf_logits(hf, inputs)[real])


DECODER_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps")


def text_fields_differ(ours, text_config):
    """{field: (ours, transformers')} where our DecoderConfig and transformers' text_config object (its defaults
    filled in) disagree."""
    theirs = {f: getattr(text_config, f, None) for f in DECODER_FIELDS}
    theirs["head_dim"] = theirs["head_dim"] or text_config.hidden_size // text_config.num_attention_heads
    theirs["rope_theta"] = float(text_config.rope_parameters["rope_theta"])
    return {f: (getattr(ours, f), theirs[f]) for f in DECODER_FIELDS if getattr(ours, f) != theirs[f]}


def export_round_trip(model: str, hf_cls, module, params, inputs, out: Path) -> float:
    """Perturbed (not converted) parameters exported with ``ports.export``, loaded by transformers' ``hf_cls``:
    returns max |Δlogits| on ``inputs``; the export converted back must give the same config and parameters
    (every tensor must be where transformers reads it, and back)."""
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: x + jnp.asarray(0.2 * rng.normal(size=x.shape), x.dtype), params)
    ports.export(model, module.config, params, out / "hf")
    hf = hf_cls.from_pretrained(out / "hf", dtype=torch.float32).eval()
    diff = max_diff_to_transformers(hf, module, params, inputs)
    ports.convert(out / "hf", out / "back", model)
    back_module, back = ports.load(out / "back")
    assert back_module.config == module.config
    jax.tree.map(np.testing.assert_array_equal, back, params)
    return diff


def released_parameter_counts(model: str, config, hf_cls, hf_config) -> tuple[int, int]:
    """(ours, transformers') parameter counts of a released config, both built without allocating."""
    _, abstract = abstract_params(model, config, jnp.bfloat16)
    ours, theirs = count_params(abstract), sum(hf_param_count(hf_cls, hf_config).values())
    print(f"{model} released config, parameters: ours {ours:,}, transformers {theirs:,}")
    return ours, theirs
