"""The embedded default LALM (DESIGN §5): Whisper tiny.en + a trained projector + SmolLM2-135M-Instruct,
joined as Audio Flamingo 3 is (:mod:`ports.audio_flamingo3`: encoder -> AvgPool1d(2) -> LayerNorm ->
projector -> ``<sound>`` splicing -> the shared decoder).

Both pretrained networks come from the package registry (:mod:`ports.packaged`) and stay frozen; only the
projector is trained (Audio Flamingo 3's stage 1), so the MLP neurons the study looks at are a real
pretrained LLM's. A mini-LALM directory (the shipped one is ``mini_lalm/`` beside this file, written by
``python -m experiments.train_reference``) holds only what was trained and what goes with it:

* ``projector.safetensors`` — ``linear_1`` / ``linear_2`` ``kernel`` and ``bias`` (Flax layout: kernel [in, out])
* ``tokenizer.json`` + ``tokenizer_config.json`` + ``chat_template.jinja`` — SmolLM2's tokenizer (converted
  from its GGUF) with the ``<sound>`` placeholder added as one more special token (id 49152)
* ``reference.json`` — as the toy reference's (:mod:`esn_jax.reference`), plus ``provenance``: the package,
  version, file and sha256 of each frozen network the projector was trained against.

:func:`load` assembles the model from the installed packages and the directory, and refuses a directory
whose provenance is not the installed files. SmolLM2 keeps its tied embeddings here; the ``<sound>`` row of
the embedding is zero (every placeholder is replaced by audio before the decoder sees it).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ports
from ports import packaged, prompts
from ports.audio_flamingo3 import AudioFlamingo3, AudioFlamingo3Config, Projector
from ports.safetensors_np import SafetensorsFile, write_safetensors

DEFAULT_DIR = Path(__file__).parent / "mini_lalm"
META = "reference.json"
PROJECTOR = "projector.safetensors"
SOUND = "<sound>"
# SmolLM2's chat template inserts this system prompt when none is given; the study's prompt uses it too.
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
FROZEN = {"language_model": packaged.SMOLLM2, "audio_tower": packaged.WHISPER_TINY_EN}


def provenance() -> dict[str, dict[str, str]]:
    """The frozen networks' packages as installed and verified: {part: {package, version, file, sha256}}."""
    out = {}
    for part, p in FROZEN.items():
        p.path()  # raises PackagedModelError (naming the install command) unless the pinned file is there
        out[part] = {"package": p.distribution, "version": importlib.metadata.version(p.distribution),
                     "file": p.file, "sha256": p.sha256}
    return out


def check_provenance(stored: dict[str, Any], path: Path) -> None:
    """Raises :class:`ports.packaged.PackagedModelError` naming every frozen file that differs from ``stored``."""
    installed = provenance()
    wrong = [f"{part}: trained against {stored.get(part)}, installed {have}" for part, have in installed.items()
             if stored.get(part) != have]
    if wrong:
        raise packaged.PackagedModelError(f"{path / META} does not match the installed frozen networks ("
                                          + "; ".join(wrong) + "); install the versions it names or retrain "
                                          "the projector (python -m experiments.train_reference)")


def frozen(dtype=jnp.float32) -> tuple[AudioFlamingo3Config, dict[str, Any]]:
    """The model's config and its frozen parameters (``audio_tower``, ``language_model``), from the packages.

    The projector is missing from the params; :func:`assemble` adds it.
    """
    name = jnp.dtype(dtype).name
    text, lm = ports.from_gguf(packaged.smollm2_gguf(), name)
    audio, encoder = ports.from_ct2(packaged.whisper_tiny_en_dir(), name)
    sound = text.vocab_size  # the placeholder is appended to SmolLM2's vocabulary
    embedding = lm["model"]["embed_tokens"]["embedding"]
    lm["model"]["embed_tokens"]["embedding"] = np.concatenate([embedding, np.zeros_like(embedding[:1])])
    config = AudioFlamingo3Config(audio=dataclasses.replace(audio, pool=True),
                                  text=dataclasses.replace(text, vocab_size=sound + 1), audio_token_id=sound)
    return config, {"audio_tower": encoder, "language_model": lm}


def init_projector(config: AudioFlamingo3Config, seed: int, dtype=jnp.float32) -> dict[str, Any]:
    """A freshly initialised projector (Flax's default initialisers), deterministic for ``seed``."""
    module = Projector(config.text.hidden_size, config.projector_bias, dtype)
    x = jnp.zeros((1, config.audio.d_model), dtype)
    return module.init(jax.random.key(seed), x)["params"]


def assemble(config: AudioFlamingo3Config, frozen_params: dict[str, Any], projector: dict[str, Any],
             dtype=jnp.float32) -> tuple[AudioFlamingo3, dict[str, Any]]:
    """-> ``(module, params)`` of the whole model."""
    return AudioFlamingo3(config, dtype), {**frozen_params, "multi_modal_projector": projector}


def load(path: str | Path | None = None, dtype=None) -> tuple[AudioFlamingo3, dict[str, Any], Any, dict[str, Any]]:
    """-> ``(module, params, tokenizer, meta)`` of the mini-LALM directory ``path`` (default: the shipped one).

    ``dtype``: the compute and parameter dtype (default float32, the only one CPUs run fast).
    """
    path = Path(path) if path is not None else DEFAULT_DIR
    if not (path / META).exists() or not (path / PROJECTOR).exists():
        raise FileNotFoundError(f"{path} is not a mini-LALM directory: it needs {META} and {PROJECTOR} (write one "
                                "with `python -m experiments.train_reference --out=DIR`)")
    meta = json.loads((path / META).read_text())
    check_provenance(meta.get("provenance", {}), path)
    dtype = jnp.dtype(dtype or jnp.float32)
    config, params = frozen(dtype)
    module, params = assemble(config, params, read_projector(path / PROJECTOR, config, dtype), dtype)
    return module, params, prompts.load_tokenizer(path), meta


def is_mini_lalm(path: str | Path) -> bool:
    return (Path(path) / PROJECTOR).exists()


def write_projector(path: Path, projector: dict[str, Any]) -> None:
    write_safetensors(path, {f"{layer}.{name}": np.asarray(v, np.float32)
                             for layer, p in projector.items() for name, v in p.items()})


def read_projector(path: Path, config: AudioFlamingo3Config, dtype=jnp.float32) -> dict[str, Any]:
    """The projector file as params; raises naming every missing, unexpected or wrong-shape tensor."""
    f = SafetensorsFile(path)
    expected = {f"{layer}.{name}": v.shape for layer, p in jax.eval_shape(
        lambda: init_projector(config, 0)).items() for name, v in p.items()}
    found = {key: f.shape(key) for key in f.entries}
    if found != expected:
        raise ValueError(f"{path} holds {found}; the projector of this model needs {expected}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in found:
        layer, name = key.split(".")
        out.setdefault(layer, {})[name] = f.read(key).astype(dtype)
    return out


def prompt(meta: dict[str, Any], n_audio: int) -> str:
    """The model's prompt for one clip of ``n_audio`` audio tokens: SmolLM2's chat layout, ``<sound>`` first."""
    return prompts.audio_flamingo3(meta["question"], n_audio, meta.get("system") or SYSTEM)


def export_hf(module: AudioFlamingo3, params: dict[str, Any], tokenizer, out: str | Path,
              overwrite: bool = False) -> Path:
    """Writes a mini-LALM (as :func:`load` returns it, or with edited ``params``) in the Hugging Face Audio
    Flamingo 3 layout at ``out``, its tokenizer beside it: transformers' ``AudioFlamingo3ForConditionalGeneration``
    and ``AutoTokenizer`` load the directory. SmolLM2's tied embedding is written twice, as the embedding and as
    the lm_head, since transformers' AF3 always has a head of its own."""
    out = ports.export("audio_flamingo3", module.config, params, out, overwrite=overwrite)
    tokenizer.save_pretrained(out)
    return out


__all__ = ["DEFAULT_DIR", "SOUND", "SYSTEM", "assemble", "export_hf", "frozen", "load", "provenance", "prompt"]
