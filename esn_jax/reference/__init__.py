"""The shipped models: the mini-LALM, the study's default (:mod:`esn_jax.reference.mini_lalm`), and the toy
reference LALM the tests use as a fast fixture: a 2-layer Qwen2.5-Omni thinker trained from scratch on
``synthetic_prosody`` (this module).

The toy model ships in this package's ``model/`` folder, written by
``python -m experiments.train_reference --config=configs/reference.py --out=esn_jax/reference/model
--overwrite``. A reference directory holds (the contract other code relies on):

* ``port.json`` + ``params/`` — our checkpoint: ``ports.load(dir)`` -> ``(module, params)``
* ``tokenizer.json`` + ``tokenizer_config.json`` — its own word-level tokenizer with Qwen2.5-Omni's special
  tokens: ``ports.prompts.load_tokenizer(dir)``
* ``reference.json`` — ``labels`` (list of words, in the label-index order of the dataset's ``four``
  view), ``label_token_ids`` (list of [id], one token per label), ``question`` (str), ``system`` (str, or
  null for Omni's default system prompt), ``dataset`` (str, a tfds name such as
  ``synthetic_prosody/small``), ``validation_accuracy`` and ``test_accuracy`` (float, constrained scoring
  over the labels), ``seed``, ``config`` (the training config), ``train_seconds``.

Use::

    module, params, tokenizer, meta = load_reference()
    batch = model_batch(tokenizer, meta, features)    # features: ports.features.qwen2_5_omni / the pipeline
    logp = esn_jax.score_labels(module, params, batch, meta["label_token_ids"])   # [B, 4]

Its emotion knowledge is real but planted: the corpus encodes prosody profiles, not acted emotion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import ports
from ports import prompts
from ports.audio import output_lengths

DEFAULT_DIR = Path(__file__).parent / "model"
META = "reference.json"


def load_reference(path: str | Path | None = None, dtype=None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """-> ``(module, params, tokenizer, meta)`` of the reference directory ``path`` (default: the shipped one).

    ``meta`` is ``reference.json`` (module docstring); ``dtype`` as :func:`ports.load`.
    """
    path = Path(path) if path is not None else DEFAULT_DIR
    if not (path / META).exists():
        raise FileNotFoundError(f"{path} is not a reference directory: no {META} (write one with "
                                "`python -m experiments.train_reference --out=DIR`)")
    module, params = ports.load(path, dtype=dtype)
    return module, params, prompts.load_tokenizer(path), json.loads((path / META).read_text())


def prompt(meta: Mapping[str, Any], n_audio: int) -> str:
    """The reference's prompt for one clip of ``n_audio`` audio tokens."""
    system = meta.get("system")  # None in reference.json files written before the system prompt was stored
    return prompts.qwen2_5_omni(meta["question"], n_audio, prompts.OMNI_VOICE_SYSTEM if system is None else system)


def prompt_width(tokenizer, meta: Mapping[str, Any], frames: int) -> int:
    """Tokens in the prompt of a clip filling ``frames`` mel frames: the fixed width of a bucket's batches."""
    return len(tokenizer(prompt(meta, int(output_lengths(frames))), add_special_tokens=False)["input_ids"])


def model_batch(tokenizer, meta: Mapping[str, Any], features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Omni features (``input_features`` [B, M, F], ``feature_attention_mask`` [B, F]) -> the thinker's inputs.

    Adds ``input_ids`` and ``attention_mask`` [B, T]: one prompt per clip with as many ``<|AUDIO|>`` as its
    encoder tokens, left-padded to the width of a clip filling all F frames, so every batch of a pipeline
    bucket has the same shapes (one compilation) and the answer position is the last column.
    """
    frames = np.asarray(features["feature_attention_mask"]).sum(-1)
    tokens = prompts.tokenize(tokenizer, [prompt(meta, int(n)) for n in output_lengths(frames)])
    width = prompt_width(tokenizer, meta, features["feature_attention_mask"].shape[-1])
    pad = width - tokens["input_ids"].shape[1]
    tokens = {"input_ids": np.pad(tokens["input_ids"], ((0, 0), (pad, 0)), constant_values=tokenizer.pad_token_id),
              "attention_mask": np.pad(tokens["attention_mask"], ((0, 0), (pad, 0)))}
    return {**tokens, "input_features": np.asarray(features["input_features"]),
            "feature_attention_mask": np.asarray(features["feature_attention_mask"])}


__all__ = ["DEFAULT_DIR", "load_reference", "model_batch", "prompt", "prompt_width"]
