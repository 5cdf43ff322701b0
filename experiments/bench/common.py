"""What the bench's comparisons share: timing, FLOP counts, random models on both sides, the down_proj hooks.

Devices: JAX puts arrays on its default device by itself; the torch side runs on ``torch_device()`` ("cuda" when
torch sees a GPU) and every timed torch call ends in :func:`sync`, so that the clock reads finished work.

Same weights on both sides without a checkpoint on disk (:func:`twin`): transformers' model is built from our
config with its own random init, on the torch device, and its state dict, under the names its checkpoints use, is
read into our params through the port's conversion table (``ports.convert.read_params``: the rules, shape checks
and dtype ``ports.convert`` applies to checkpoints). At 7B this replaces writing and reading 15 GB of safetensors.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import ports
from ports.convert import read_params
from ports.models import spec

DTYPES = ("float32", "bfloat16")


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed call (compilation, warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(dtype: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def sync() -> None:
    """Waits for the GPU's queued torch work (a no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_torch() -> None:
    """Returns the memory of dropped torch models to the GPU, for the next comparison (JAX shares the device)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def forward_flops(cfg: ports.DecoderConfig, batch: int, length: int) -> float:
    """FLOPs of one scoring forward: every projection, full attention matrices, the head at one position."""
    qkv_o = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size
    attention = 2 * cfg.num_attention_heads * length * cfg.head_dim
    per_token = 2 * cfg.num_hidden_layers * (qkv_o + mlp + attention)
    return batch * (length * per_token + 2 * cfg.hidden_size * cfg.vocab_size)


def rate(flops_per_s: float) -> str:
    """'788.0 TFLOP/s' from one TFLOP/s up, else '266.1 GFLOP/s'."""
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def random_model(cfg: ports.DecoderConfig, dtype: str = "float32", seed: int = 0):
    """Our Qwen2 decoder with random weights (initialised on the default device): (module, params)."""
    module = ports.Qwen2ForCausalLM(cfg, jnp.dtype(dtype))
    params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"]
    return module, params


def random_ids(vocab: int, clips: int, length: int, seed: int = 0, low: int = 10) -> np.ndarray:
    """Token ids [clips, length] drawn from [low, vocab)."""
    return np.random.default_rng(seed).integers(low, vocab, (clips, length)).astype(np.int32)


def torch_random(model: str, config, dtype: str = "float32", seed: int = 0):
    """transformers' class for ``model`` (the ``architectures`` of our config's Hugging Face dict) with its own
    random init, built in ``dtype`` on the torch device, in eval mode."""
    import torch
    import transformers

    hf_config = config.to_hf()
    cls = getattr(transformers, hf_config["architectures"][0])
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype(dtype))  # the parameters are created in dtype: no float32 copy at 7B
    try:
        with torch.device(torch_device()):
            hf = cls(transformers.AutoConfig.for_model(**hf_config))
    finally:
        torch.set_default_dtype(default)
    return hf.to(torch_dtype(dtype)).eval()


class _StateDict:
    """A torch state dict as a checkpoint reader for ``ports.rules.convert_tensors`` (keys, shape, read)."""

    def __init__(self, tensors, source: str):
        self.tensors, self.source = tensors, source

    def keys(self):
        return self.tensors.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def read(self, key: str) -> np.ndarray:
        import torch

        t = self.tensors[key].detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bits, read as ml_dtypes' bfloat16
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()


def twin(model: str, config, dtype: str = "float32", seed: int = 0):
    """The same random weights on both sides: (our module, our params on the default device, transformers' model).

    model: a key of ``ports.MODELS`` whose config has ``to_hf`` (``qwen2``, ``audio_flamingo3``, ...).
    """
    from transformers.core_model_loading import revert_weight_conversion

    hf = torch_random(model, config, dtype, seed)
    # transformers 5 names some modules apart from their checkpoint keys (AF3: model.language_model.* is stored as
    # language_model.model.*); save_pretrained reverts that renaming, and so do we, without copying a tensor.
    tensors = revert_weight_conversion(hf, hf.state_dict())
    s = spec(model)
    params = read_params(model, config, _StateDict(tensors, f"transformers {type(hf).__name__}"), s.rules(config),
                         dtype, s.ignore)
    return s.build(config, jnp.dtype(dtype)), jax.device_put(params), hf


def audio_in_embeds(hf, input_ids, input_features, input_features_mask):
    """What a careful transformers user computes once per clip for Audio Flamingo 3: the encoder's output written over
    the audio placeholders' token embeddings -> inputs_embeds [B, T, H], for ``inputs_embeds=`` calls.

    input_ids [B, T] (torch long); input_features [B, M, F] and input_features_mask [B, F]: whole 30-s windows. The
    audio encoder has no down_proj, so :func:`scaled_down_proj` leaves this the same under every intervention.
    """
    audio = hf.get_audio_features(input_features, input_features_mask).pooler_output  # [audio tokens, H]
    embeds = hf.get_input_embeddings()(input_ids)
    embeds[input_ids == hf.config.audio_token_id] = audio.to(embeds.dtype)
    return embeds


@contextlib.contextmanager
def scaled_down_proj(model, scale=None):
    """transformers' ``model`` with every decoder layer's ``mlp.down_proj`` input multiplied by ``scale[layer]``
    (forward pre-hooks, removed on exit). Yields ``current``, a one-element list holding the scale, which the
    caller may replace between forwards: [L, I] (every row alike) or [L, R, 1, I] (row r its own; R = the
    forward's rows), a torch tensor on the model's device, or None (the input unchanged). A ``gate_act`` or
    ``mlp_in`` scale of ours is the same edit: both enter down_proj linearly (:mod:`ports.sites`)."""
    import torch

    layers = model.get_decoder().layers
    if scale is not None:
        if not isinstance(scale, torch.Tensor):
            scale = np.array(scale)  # a copy: jax arrays are read-only, which torch warns about
        scale = torch.as_tensor(scale, dtype=model.dtype, device=model.device)
        assert scale.shape[0] == len(layers), (scale.shape, len(layers))
    current = [scale]

    def hook(layer):
        def pre(_module, args):
            return None if current[0] is None else (args[0] * current[0][layer], *args[1:])
        return pre

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield current
    finally:
        for handle in handles:
            handle.remove()


def agreement(ours, theirs) -> tuple[float, float]:
    """(fraction of equal argmaxes over the last axis, max |difference|) of two label log-prob arrays [..., N]."""
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    return float((ours.argmax(-1) == theirs.argmax(-1)).mean()), float(np.abs(ours - theirs).max())
