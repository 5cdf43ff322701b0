"""Shared helpers of the LALM port tests: torch weights through our rule tables, tiny configs."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import torch
from flax import traverse_util

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
