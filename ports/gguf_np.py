"""Reading a llama.cpp GGUF file (a Llama decoder) as numpy, through the ``gguf`` package.

The ``gguf`` package parses the file (memory-mapped) and dequantises every tensor type it implements in
numpy; nothing here decodes a quantisation format by hand. Its tensor names map onto ours through the
Hugging Face names of :func:`ports.rules.decoder_rules`, renamed by one table (:data:`GGUF_NAMES`).

llama.cpp's converter permutes the rows of every head of q_proj and k_proj so that its RoPE can rotate
interleaved pairs (x0, x1), (x2, x3), ...; our decoder (like transformers) rotates halves
(x_i, x_{i + D/2}). :func:`halves_from_interleaved` undoes that permutation.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ports.config import DecoderConfig, UnsupportedConfigError
from ports.rules import Rule, attention_biases, decoder_rules
from ports.safetensors_np import CheckpointFileError

ARCHITECTURE = "llama"

# Hugging Face name piece -> GGUF name piece (llama.cpp's tensor names for a Llama decoder).
GGUF_NAMES = (
    ("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."), ("lm_head.", "output."),
    ("model.layers.", "blk."), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
)

# GGUF metadata key (after "llama.") -> the config.json attribute it sets.
GGUF_CONFIG = {
    "vocab_size": "vocab_size", "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
}
# Metadata that must agree with the head size (llama.cpp writes it even when it is the default).
_HEAD_DIM_KEYS = ("rope.dimension_count", "attention.value_length")
ROPE_THETA_DEFAULT = 10000.0  # llama.cpp's value when a GGUF names none


def halves_from_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows [heads * D, ...] in llama.cpp's interleaved-pair order -> transformers' rotate-half order."""
    return w.reshape(heads, -1, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def interleaved_from_halves(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`halves_from_interleaved` (what llama.cpp's converter does)."""
    return w.reshape(heads, 2, -1, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """The tensors and metadata of one GGUF file: ``keys``/``shape``/``read`` as :class:`SafetensorsCheckpoint`.

    Shapes are numpy's (the reverse of GGUF's ggml order), so a weight reads as torch's [out, in].
    ``read`` returns float32, dequantised by the ``gguf`` package.
    """

    def __init__(self, path: str | Path):
        self.source = Path(path)
        if not self.source.is_file():
            raise FileNotFoundError(f"{self.source} does not exist; expected a GGUF file")
        try:
            reader = gguf.GGUFReader(self.source)
        except (ValueError, KeyError, IndexError, OSError) as e:
            raise CheckpointFileError(f"{self.source} cannot be read as GGUF (truncated, or not a GGUF file): "
                                      f"{e}") from None
        self._fields = reader.fields
        self._tensors = {t.name: t for t in reader.tensors}
        kinds = {t.tensor_type for t in reader.tensors}
        unsupported = sorted(k.name for k in kinds if not _dequantisable(k))
        if unsupported:
            raise CheckpointFileError(f"{self.source} stores tensors as {unsupported}, which the gguf package "
                                      f"{importlib.metadata.version('gguf')} cannot dequantise in numpy; supported: "
                                      f"{sorted(t.name for t in gguf.GGMLQuantizationType if _dequantisable(t))}")

    def keys(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[key].shape))

    def read(self, key: str) -> np.ndarray:
        t = self._tensors[key]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(self.shape(key))

    def metadata(self, prefix: str = "") -> dict[str, Any]:
        """The metadata whose keys start with ``prefix`` (decoded on demand: the tokenizer's are large)."""
        return {k: f.contents() for k, f in self._fields.items() if k.startswith(prefix)}

    @property
    def has_tokenizer(self) -> bool:
        return "tokenizer.ggml.model" in self._fields


@functools.cache
def _dequantisable(kind) -> bool:
    """Whether the gguf package dequantises ``kind`` in numpy, asked of it on one block of zeros."""
    _, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    try:
        gguf.quants.dequantize(np.zeros((1, block_bytes), np.uint8), kind)
    except NotImplementedError:
        return False
    return True


def decoder_config(ckpt: GGUFCheckpoint) -> DecoderConfig:
    """The decoder's config from the GGUF metadata, refusing another architecture and every ``llama.*``
    attribute the port does not implement (RoPE scaling, experts, ...) by name."""
    meta = {**ckpt.metadata("general."), **ckpt.metadata("split."), **ckpt.metadata(f"{ARCHITECTURE}.")}
    arch = meta.get("general.architecture")
    if arch != ARCHITECTURE:
        raise UnsupportedConfigError(f"{ckpt.source} holds general.architecture={arch!r}; the GGUF reader converts "
                                     f"{ARCHITECTURE!r} only")
    if int(meta.get("split.count", 1)) > 1:
        raise UnsupportedConfigError(f"{ckpt.source} is one of {meta['split.count']} split GGUF files; merge them "
                                     "first (llama.cpp's gguf-split --merge)")
    prefix = f"{ARCHITECTURE}."
    own = {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)}
    unknown = sorted(prefix + k for k in set(own) - set(GGUF_CONFIG) - set(_HEAD_DIM_KEYS))
    if unknown:
        raise UnsupportedConfigError(f"{ckpt.source}: metadata {unknown} is not implemented by the llama port "
                                     f"(it reads {sorted(prefix + k for k in GGUF_CONFIG)})")
    hf: dict[str, Any] = {"model_type": ARCHITECTURE, "rope_theta": ROPE_THETA_DEFAULT}
    if "token_embd.weight" in ckpt:  # llama.vocab_size is optional in GGUF
        hf["vocab_size"] = ckpt.shape("token_embd.weight")[0]
    hf.update({GGUF_CONFIG[k]: v for k, v in own.items() if k in GGUF_CONFIG})
    hf["tie_word_embeddings"] = "output.weight" not in ckpt
    hf["attention_bias"] = "blk.0.attn_q.bias" in ckpt
    config = DecoderConfig.from_hf(hf, ARCHITECTURE)
    wrong = {f"{prefix}{k}": own[k] for k in _HEAD_DIM_KEYS if k in own and own[k] != config.head_dim}
    if wrong:
        raise UnsupportedConfigError(f"{ckpt.source}: {wrong} differ from head_dim={config.head_dim} (partial "
                                     "rotary or unequal key/value heads are not implemented)")
    return config


def rules(config: DecoderConfig) -> tuple[Rule, ...]:
    """:func:`ports.rules.decoder_rules` renamed to GGUF tensor names; q/k rows back in rotate-half order."""
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
    out = []
    for r in decoder_rules(biases=attention_biases(config)):
        name = r.hf
        for theirs, ours in GGUF_NAMES:
            name = name.replace(theirs, ours)
        n = next((h for piece, h in heads.items() if piece in r.hf), None)
        if n is None:
            out.append(Rule(name, r.path, r.transform, r.inverse))
        else:
            out.append(Rule(name, r.path, _compose(r.transform, halves_from_interleaved, n),
                            _then(r.inverse, interleaved_from_halves, n)))
    return tuple(out)


def _compose(transform, unpermute, heads):
    return lambda w: transform(unpermute(w, heads))


def _then(inverse, permute, heads):
    return lambda w: permute(inverse(w), heads)
