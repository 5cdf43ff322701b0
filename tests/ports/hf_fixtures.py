"""Tiny random transformers checkpoints written the real way (``save_pretrained`` to safetensors)."""

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

FAMILIES = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere: transformers initialises norms to 1 and biases to 0, which would
    let a swapped or dropped norm/bias go unnoticed in a parity test."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model.eval()


def causal_lm(directory: Path, family: str = "qwen2", seed: int = 0, max_shard_size: str | None = None,
              **config) -> torch.nn.Module:
    """Saves a random ``Qwen2ForCausalLM`` or ``LlamaForCausalLM`` (``family``) with ``config`` to ``directory``;
    returns the torch model."""
    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.update(config)
    torch.manual_seed(seed)
    config_cls, model_cls = FAMILIES[family]
    model = randomize_(model_cls(config_cls(**cfg)), seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return model


def torch_logits(model, input_ids, attention_mask, position_ids) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(input_ids), attention_mask=torch.as_tensor(attention_mask),
                    position_ids=torch.as_tensor(position_ids))
    return out.logits.numpy()
