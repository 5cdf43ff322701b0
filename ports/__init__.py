"""Flax ports of the study's models, with weight conversion from Hugging Face checkpoints.

Public API::

    module, params = ports.load(path)                       # a converted checkpoint
    logits = module.apply({"params": params}, input_ids=..., attention_mask=...)
    ports.convert(hf_dir, out, model="qwen2")               # what `python -m experiments.convert` runs
    ports.convert_gguf(gguf_file, out)                      # a llama.cpp GGUF (Llama) + its tokenizer
    ports.convert_ct2(ct2_dir, out)                         # a CTranslate2 Whisper model's encoder
    config, params = ports.from_gguf(ports.packaged.smollm2_gguf())   # in memory, no checkpoint written
    ports.export("qwen2", config, params, hf_out)           # back to a transformers checkpoint directory

Neuron sites and the ``interventions`` argument: see :mod:`ports.sites`.
"""

from ports import packaged
from ports.checkpoint import load, save
from ports.config import DecoderConfig, UnsupportedConfigError
from ports.convert import convert, convert_ct2, convert_gguf, export, from_ct2, from_gguf
from ports.decoder import Decoder, Qwen2ForCausalLM
from ports.models import MODELS
from ports.rules import ConversionError
from ports.safetensors_np import CheckpointFileError
from ports.sites import SITES, capture_filter, collect

__all__ = [
    "MODELS", "SITES", "CheckpointFileError", "ConversionError", "Decoder", "DecoderConfig",
    "Qwen2ForCausalLM", "UnsupportedConfigError", "capture_filter", "collect", "convert", "convert_ct2", "convert_gguf",
    "export", "from_ct2", "from_gguf", "load", "packaged", "save",
]
