"""The memory plan: per device, for each real model on common GPU and TPU slices — parameters, statistics,
activations of the scoring pass — and the largest batch × variants that fits (``experiments.memory_plan``).

Nothing is typed by hand but the slices' memory sizes: parameter bytes come from ``jax.eval_shape`` and
the sharding rules (:mod:`ports.sharding`); the activation bytes of one scoring pass come from XLA's own
memory analysis of the compiled, sharded decoder forward (compiled for 8 CPU devices standing in for the
accelerators; nothing is allocated) at two batch sizes, fitted as fixed + per-sequence bytes, compiled
in float32 and scaled to the planned dtype (see :func:`activation_bytes`). Audio
encoders run once per clip outside the variant axis and are counted in the parameters only; so is
Kimi-Audio's GLM-4-Voice speech tokenizer (:data:`AUXILIARY`), whole and in float32 on every device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ports import sharding
from ports.audio import output_lengths
from ports.models import abstract_params, spec

MODELS_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
GiB = 2**30
HEADROOM = 0.9  # leave 10% of device memory to the runtime and fragmentation
PROMPT_TOKENS = 64  # system prompt, question, chat markup around the audio placeholders


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    devices: int
    bytes_per_device: float


SLICES = (
    Slice("1× H100 80GB", 1, 80e9),
    Slice("8× H100 80GB", 8, 80e9),
    Slice("1× H200 141GB", 1, 141e9),
    Slice("TPU v5e-8 (16 GiB/chip)", 8, 16 * GiB),
    Slice("TPU v4-8 (32 GiB/chip)", 4, 32 * GiB),
    Slice("TPU v5p-8 (95 GiB/chip)", 4, 95 * GiB),
)

# A second network the study holds besides the model: the GLM-4-Voice tokenizer gives Kimi-Audio's prompts their
# codes. It runs in float32 (as the official code does) and unsharded, once per clip when the batches are built.
AUXILIARY = {"kimi_audio": "glm4_voice_tokenizer"}


def auxiliary_bytes(model: str) -> int:
    """Bytes of the float32 parameters of ``model``'s auxiliary network (0 without one), from its real config."""
    if model not in AUXILIARY:
        return 0
    aux = AUXILIARY[model]
    config = spec(aux).config_from_hf(json.loads((MODELS_DIR / f"{aux}.config.json").read_text()))
    _, abstract = abstract_params(aux, config, jnp.float32)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def real_config(model: str):
    """The 7B config of ``model`` from configs/models (the Hugging Face config.json files)."""
    main = json.loads((MODELS_DIR / f"{model}_7b.config.json").read_text())
    subs = [json.loads((MODELS_DIR / "whisper_large_v3.config.json").read_text())] if spec(model).subfolders else []
    return spec(model).config_from_hf(main, *subs)


def sequence_length(model: str, seconds: float) -> int:
    """Prompt tokens of one clip: audio tokens at the model's rate (DESIGN §3) + the text around them."""
    if model == "kimi_audio":
        audio = int(np.ceil(seconds * 12.5))
    else:
        windows, rest = divmod(int(round(seconds * 100)), 3000)
        audio = windows * int(output_lengths(3000)) + (int(output_lengths(rest)) if rest else 0)
    return audio + PROMPT_TOKENS


def decoder_of(config):
    """The DecoderConfig inside a port's config (the decoder is what the variant axis multiplies)."""
    return getattr(config, "text", config)


def activation_bytes(model: str, config, mesh, length: int, dtype) -> tuple[float, float]:
    """(fixed, per-sequence) temporary bytes per device of one scoring forward, from XLA's memory analysis.

    The forward runs the decoder on inputs_embeds [b, T, H] with logits at the answer position only,
    sharded as the study shards it (batch over ``data``, parameters by the rules). It is compiled in
    float32 and scaled to ``dtype``'s size: the CPU backend standing in for the accelerators upcasts
    bfloat16 matmuls (weights included) to float32 temporaries, which GPUs and TPUs do not.
    """
    scale = np.dtype(dtype).itemsize / 4
    fixed, per_seq = _float32_activation_bytes(model, config, mesh, length)
    return fixed * scale, per_seq * scale


def _float32_activation_bytes(model: str, config, mesh, length: int) -> tuple[float, float]:
    dtype = jnp.dtype(jnp.float32)
    module, abstract = abstract_params(model, config, dtype)
    shardings = sharding.param_shardings(abstract, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    hidden = decoder_of(config).hidden_size
    data = mesh.shape["data"]

    def temp(per_device_batch: int) -> int:
        b = per_device_batch * data
        embeds = jax.ShapeDtypeStruct((b, length, hidden), dtype, sharding=NamedSharding(mesh, P("data")))
        positions = jax.ShapeDtypeStruct((b, 1), jnp.int32, sharding=NamedSharding(mesh, P("data")))
        forward = jax.jit(functools.partial(_score_forward, module))
        return forward.lower(params, embeds, positions).compile().memory_analysis().temp_size_in_bytes

    one, two = temp(1), temp(2)
    return max(2 * one - two, 0), two - one


def _score_forward(module, params, inputs_embeds, logits_positions):
    return module.apply({"params": params}, inputs_embeds=inputs_embeds, logits_positions=logits_positions)


def plan_rows(models, slices, seconds: float, dtype, emotions: int) -> list[dict]:
    rows = []
    for model in models:
        config = real_config(model)
        decoder = decoder_of(config)
        length = sequence_length(model, seconds)
        stats = emotions * decoder.num_hidden_layers * decoder.intermediate_size * 12  # int32 count + 2 float32
        for sl in slices:
            for axis in ("data",) if sl.devices == 1 else ("data", "model"):
                mesh = sharding.make_mesh(**{axis: sl.devices})
                _, abstract = abstract_params(model, config, dtype)
                params = sharding.bytes_per_device(abstract, sharding.param_shardings(abstract, mesh))
                params += auxiliary_bytes(model)
                fixed, per_seq = activation_bytes(model, config, mesh, length, dtype)
                free = HEADROOM * sl.bytes_per_device - params - stats - fixed
                per_device = max(int(free // per_seq), 0) if per_seq > 0 else 0
                rows.append(dict(model=model, slice=sl.name, mesh=f"{axis}:{sl.devices}", tokens=length,
                                 params_gb=params / 1e9, stats_mb=stats / 1e6, act_mb_per_seq=per_seq / 1e6,
                                 fits=free > 0, max_seqs=per_device * (sl.devices if axis == "data" else 1)))
    return rows


def markdown(rows: list[dict], seconds: float, dtype) -> str:
    lines = [f"Per device, {np.dtype(dtype).name}, {seconds:g}-s clips; max sequences = batch × variants in one "
             "compiled scoring call over the whole slice.", "",
             "| model | slice | mesh | tokens/clip | params/device | stats | activations/sequence "
             "| max batch × variants |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fit = f"{r['max_seqs']}" if r["fits"] else "does not fit"
        lines.append(f"| {r['model']} | {r['slice']} | {r['mesh']} | {r['tokens']} | {r['params_gb']:.1f} GB | "
                     f"{r['stats_mb']:.0f} MB | {r['act_mb_per_seq']:.0f} MB | {fit} |")
    return "\n".join(lines)
