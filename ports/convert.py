"""Checkpoints of other formats -> ours, through declarative rule tables; ours -> the Hugging Face layout.

Sources: a Hugging Face directory (config.json + safetensors; every model), a llama.cpp GGUF file
(``llama``; :mod:`ports.gguf_np`) and a CTranslate2 Whisper model (``whisper_encoder``; :mod:`ports.ct2_np`).
``from_*`` return ``(config, params)`` in memory; ``convert*`` write our checkpoint (atomically).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import traverse_util

from ports import checkpoint, ct2_np, gguf_np
from ports.models import abstract_params, spec
from ports.rules import Rule, convert_tensors, export_tensors
from ports.safetensors_np import SINGLE, SafetensorsCheckpoint, write_safetensors

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def convert(hf_dir: str | Path, out: str | Path, model: str, dtype: str | None = None,
            overwrite: bool = False) -> Path:
    """Converts ``hf_dir`` (config.json + safetensors, and the model's sub-checkpoint folders) for ``model``;
    writes our checkpoint at ``out``.

    ``dtype``: one of DTYPES; default keeps the checkpoint's own dtype (that of its embeddings).
    """
    config, params = from_hf_dir(hf_dir, model, dtype)
    return checkpoint.save(out, model, config, params, overwrite=overwrite)


def from_hf_dir(hf_dir: str | Path, model: str, dtype: str | None = None):
    """``(config, params)`` of a Hugging Face checkpoint directory for ``model`` (see :func:`convert`)."""
    hf_dir = Path(hf_dir)
    s = spec(model)
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
    return config, read_params(model, config, ckpt, s.rules(config), dtype, s.ignore)


def from_gguf(path: str | Path, dtype: str | None = None):
    """``(config, params)`` of a llama.cpp GGUF file holding a Llama decoder, dequantised (default float32)."""
    return _read_gguf(gguf_np.GGUFCheckpoint(path), dtype)


def _read_gguf(ckpt: gguf_np.GGUFCheckpoint, dtype: str | None):
    config = gguf_np.decoder_config(ckpt)
    return config, read_params("llama", config, ckpt, gguf_np.rules(config), dtype)


def convert_gguf(path: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Converts a GGUF file for ``llama`` and writes its tokenizer beside our checkpoint (transformers' GGUF
    tokenizer conversion, with the GGUF's chat template), so that ``ports.prompts.load_tokenizer(out)`` works.
    A GGUF without tokenizer metadata gives a checkpoint without tokenizer files."""
    path = Path(path)
    ckpt = gguf_np.GGUFCheckpoint(path)  # opened once: parsing a tokenizer's metadata takes seconds
    if ckpt.has_tokenizer:
        _check_torch()
    config, params = _read_gguf(ckpt, dtype)
    with checkpoint.atomic_directory(out, overwrite) as tmp:
        checkpoint.write(tmp, "llama", config, params)
        if ckpt.has_tokenizer:
            gguf_tokenizer(path).save_pretrained(tmp)
    return Path(out).absolute()


def gguf_tokenizer(path: str | Path):
    """The tokenizer and chat template in a GGUF file's metadata (transformers' GGUF conversion)."""
    _check_torch()
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _check_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise ImportError("transformers' GGUF tokenizer conversion needs torch; install it with "
                          "`pip install -e \".[convert]\"` (torch==2.13.0, the CPU wheel)")


def from_ct2(directory: str | Path, dtype: str | None = None):
    """``(config, params)`` of the Whisper encoder in a CTranslate2 model directory (default: its stored dtype)."""
    ckpt = ct2_np.CTranslate2Checkpoint(directory)
    config = ct2_np.encoder_config(ckpt)
    params = read_params("whisper_encoder", config, ckpt, ct2_np.rules(config), dtype, ct2_np.IGNORE)
    ct2_np.check_key_bias(ckpt, config)
    return config, params


def convert_ct2(directory: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Converts a CTranslate2 Whisper model's encoder for ``whisper_encoder``; writes our checkpoint at ``out``."""
    config, params = from_ct2(directory, dtype)
    return checkpoint.save(out, "whisper_encoder", config, params, overwrite=overwrite)


def read_params(model: str, config, ckpt, rules: tuple[Rule, ...], dtype: str | None = None,
                ignore: tuple[str, ...] = ()) -> dict:
    """Reads ``ckpt`` (any reader with ``keys``/``shape``/``read``) through ``rules`` into ``model``'s nested
    parameter dict; ``dtype`` one of DTYPES, default that of the first rule's tensor as stored."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
    present = set(ckpt.keys())
    first = next((r.hf for r in rules if r.hf in present), None)
    target = np.dtype(DTYPES[dtype]) if dtype else (ckpt.read(first).dtype if first else np.dtype(np.float32))
    _, abstract = abstract_params(model, config, target)
    expected = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(abstract).items()}
    flat = convert_tensors(ckpt, rules, expected, target, ignore=ignore)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def export(model: str, config, params, out: str | Path, overwrite: bool = False) -> Path:
    """Writes ``params`` as a Hugging Face checkpoint directory (config.json + model.safetensors) at ``out``.

    transformers' ``from_pretrained`` loads it; ``convert`` reads it back. Written atomically.
    """
    if not hasattr(config, "to_hf"):
        raise ValueError(f"--model={model} has no Hugging Face export (its config has no to_hf)")
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    tensors = export_tensors(spec(model).rules(config), flat)
    with checkpoint.atomic_directory(out, overwrite) as tmp:
        write_safetensors(tmp / SINGLE, tensors)
        (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
    return Path(out).absolute()
