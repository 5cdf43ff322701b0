"""Hugging Face checkpoint directory <-> our checkpoint, through the model's declarative rule table."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import traverse_util

from ports import checkpoint
from ports.models import abstract_params, spec
from ports.rules import convert_tensors, export_tensors
from ports.safetensors_np import SINGLE, SafetensorsCheckpoint, write_safetensors

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def convert(hf_dir: str | Path, out: str | Path, model: str, dtype: str | None = None,
            overwrite: bool = False) -> Path:
    """Converts ``hf_dir`` (config.json + safetensors, and the model's sub-checkpoint folders) for ``model``;
    writes our checkpoint at ``out``.

    ``dtype``: one of DTYPES; default keeps the checkpoint's own dtype (that of its embeddings).
    """
    hf_dir = Path(hf_dir)
    s = spec(model)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{hf_dir} has no config.json; expected a Hugging Face checkpoint directory")
    missing = [f for f in s.subfolders if not (hf_dir / f / "config.json").exists()]
    if missing:
        raise FileNotFoundError(f"{hf_dir} lacks the sub-checkpoint folders {missing} (each with config.json + "
                                f"safetensors) that --model={model} needs")
    configs = [json.loads(p.read_text()) for p in [config_path, *(hf_dir / f / "config.json" for f in s.subfolders)]]
    config = s.config_from_hf(*configs)
    ckpt = SafetensorsCheckpoint(hf_dir, s.subfolders)
    rules = s.rules(config)
    target = np.dtype(DTYPES[dtype]) if dtype else ckpt.read(rules[0].hf).dtype
    _, abstract = abstract_params(model, config, target)
    expected = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(abstract).items()}
    flat = convert_tensors(ckpt, rules, expected, target, ignore=s.ignore)
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return checkpoint.save(out, model, config, params, overwrite=overwrite)


def export(model: str, config, params, out: str | Path, overwrite: bool = False) -> Path:
    """Writes ``params`` as a Hugging Face checkpoint directory (config.json + model.safetensors) at ``out``.

    transformers' ``from_pretrained`` loads it; ``convert`` reads it back. Written atomically.
    """
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    tensors = export_tensors(spec(model).rules(config), flat)
    with checkpoint.atomic_directory(out, overwrite) as tmp:
        write_safetensors(tmp / SINGLE, tensors)
        (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
    return Path(out).absolute()
