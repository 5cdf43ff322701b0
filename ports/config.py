"""The decoder's configuration: one frozen dataclass, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any


class UnsupportedConfigError(ValueError):
    """A config.json asks for something this port does not implement."""


class Config:
    """``to_dict``/``from_dict`` (what port.json stores) for frozen dataclasses whose fields may be Configs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        hints = typing.get_type_hints(cls)
        return cls(**{k: hints[k].from_dict(v) if isinstance(hints[k], type) and issubclass(hints[k], Config) else v
                      for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class DecoderConfig(Config):
    """A Qwen2/Qwen2.5 or Llama decoder: the language backbone of all three LALMs and of SmolLM2.

    Field names follow transformers' ``Qwen2Config`` / ``LlamaConfig``. The two families differ only in
    what their configs can say: Qwen2 always has q/k/v biases and none on o_proj; Llama has biases on
    q/k/v *and* o_proj when ``attention_bias``, else none.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # q/k/v biases (and, for llama, an o_proj bias)
    model_type: str = "qwen2"  # the transformers family the config reads from and exports to

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"model_type={self.model_type!r}; expected one of {sorted(FAMILIES)}")
        if self.model_type == "qwen2" and not self.attention_bias:
            raise ValueError("a qwen2 decoder always has q/k/v biases; attention_bias=False needs model_type='llama'")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @property
    def o_proj_bias(self) -> bool:
        return self.model_type == "llama" and self.attention_bias

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``Qwen2Config`` / ``LlamaConfig`` dict for this decoder (the inverse of :meth:`from_hf`)."""
        fields = self.to_dict()
        theta, family = fields.pop("rope_theta"), fields.pop("model_type")
        if family == "qwen2":
            del fields["attention_bias"]
        return {"model_type": family, "architectures": [FAMILIES[family]], "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": theta}, **fields}

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], model_type: str = "qwen2") -> DecoderConfig:
        """Builds the config from a transformers ``config.json`` dict, refusing what the port lacks.

        Every attribute must be one the port implements, one it knowingly ignores (bookkeeping,
        training or generation settings that do not change a forward pass), or one it refuses
        unless set to its inert value. Anything else is an error that names it, so that a new
        architectural switch is never silently dropped.
        """
        if hf.get("model_type") != model_type:
            raise UnsupportedConfigError(
                f"config.json has model_type={hf.get('model_type')!r}; expected {model_type!r}"
            )
        problems = []
        missing = [k for k in _REQUIRED if k not in hf]
        if missing:
            problems.append(f"missing attributes {missing}")
        if model_type not in FAMILY_OF:
            raise UnsupportedConfigError(f"model_type={model_type!r} has no decoder port; expected one of "
                                         f"{sorted(FAMILY_OF)}")
        family = FAMILY_OF[model_type]
        implemented = _IMPLEMENTED | _FAMILY_ATTRIBUTES[family]
        unknown = sorted(set(hf) - implemented - _IGNORED - set(_INERT))
        if unknown:
            problems.append(f"unknown attributes {unknown} (the {model_type} port implements "
                            f"{sorted(implemented)} and ignores {sorted(_IGNORED)})")
        for key, is_inert in _INERT.items():
            if key in hf and not is_inert(hf[key], hf):
                problems.append(f"{key}={hf[key]!r} is not implemented")
        rope = _rope_theta(hf, problems)
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={hf['hidden_act']!r} is not implemented (expected 'silu')")
        if problems:
            raise UnsupportedConfigError("config.json is not supported by the port: " + "; ".join(problems))
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=rope,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", False) if family == "llama" else True,
            model_type=family,
        )


# The decoder families the port reads and exports, with transformers' causal-LM class of each.
FAMILIES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
# config.json model_types whose decoder the port reads -> its family (Omni's text config is a Qwen2 decoder).
FAMILY_OF = {"qwen2": "qwen2", "qwen2_5_omni_text": "qwen2", "llama": "llama"}


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_IMPLEMENTED = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
    "hidden_act", "rope_theta", "rope_parameters", "rope_scaling",
})
_FAMILY_ATTRIBUTES = {"qwen2": frozenset(), "llama": frozenset({"attention_bias"})}
# Bookkeeping, initialisation, training-only, generation and length settings: none changes the
# forward pass of a full-attention decoder. Llama's pretraining_tp > 1 only splits each matmul into
# slices whose results are summed: the same function.
_IGNORED = frozenset({
    "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "auto_map",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache",
    "max_position_embeddings", "pretraining_tp", "output_attentions", "output_hidden_states",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "tokenizer_class", "task_specific_params", "use_return_dict", "pruned_heads",
    "tie_encoder_decoder", "add_cross_attention", "cross_attention_hidden_size", "is_decoder",
})
# Attributes accepted only while they leave the computation as the port implements it.
_INERT = {
    "attention_dropout": lambda v, hf: not v,
    "mlp_bias": lambda v, hf: not v,
    "use_sliding_window": lambda v, hf: not v,
    "sliding_window": lambda v, hf: not hf.get("use_sliding_window", False) or v is None,
    "max_window_layers": lambda v, hf: not hf.get("use_sliding_window", False),
    "layer_types": lambda v, hf: v is None or all(t == "full_attention" for t in v),
}


def _rope_theta(hf: Mapping[str, Any], problems: list[str]) -> float:
    """Reads theta from ``rope_parameters`` (transformers 5) or ``rope_theta`` (4.x); default RoPE only."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling")
    if scaling:
        params = {**scaling, **params}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope scaling rope_type={rope_type!r} is not implemented (expected 'default')")
    # A config that names no theta gets transformers' default, the same for Qwen2Config and LlamaConfig.
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
