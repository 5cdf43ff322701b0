r"""The memory plan (see :mod:`experiments.memory`): the largest scoring call that fits, found by compiling it.

  python -m experiments.memory_plan --here [--mesh=data:4,model:2] [--memory_budget=BYTES]
  python -m experiments.memory_plan [--model=kimi_audio]       # the Markdown table of README's "Scale"
  common: [--clip_seconds=30 --compute_dtype=bfloat16 --emotions=7 --clips=8 --max_variants=1024
          --model_config=config.json]

--here plans for the devices of this machine (the accurate number): the program is compiled for them on the mesh
of --mesh (default: every device on ``data``), within --memory_budget bytes per device (default: 90% of the first
device's memory); it prints the backend and, for each model, the largest call clips × variants with the bytes per
device of it and of one variant more. A budget too small for one variant is an error naming both. With
--distributed (or under experiments.launch) every process compiles the group's mesh and measures against its own
first device (``ports.sharding.local_device``).
Without --here it prints the table for common GPU and TPU slices, compiled on the CPU backend (8 CPU devices stand in
for a slice's) with the error margin of that estimate in its heading.
--model_config: a Hugging Face config.json for the one --model (default: its released config in configs/models,
experiments.memory.REAL_CONFIGS).
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from esn_jax import sizing
from experiments import devices, hosts
from experiments.memory import (
    REAL_CONFIGS,
    SLICES,
    UPPER_CHUNK,
    gpu_jump,
    h200_margin,
    markdown,
    plan_here,
    plan_rows,
    real_config,
    sequence_length,
)
from ports import sharding

_MODELS = flags.DEFINE_list("model", list(REAL_CONFIGS), "Models to plan.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", "", "config.json of the one --model (default: its released one).")
_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", 30.0, "Clip length the activations are planned for.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["bfloat16", "float32"], "Parameter and activation dtype.")
_EMOTIONS = flags.DEFINE_integer("emotions", 7, "E, emotions in the statistics (MELD has 7).")
_CLIPS = flags.DEFINE_integer("clips", 8, "Clips per data shard in one call; the variants are searched.")
_MAX_VARIANTS = flags.DEFINE_integer("max_variants", UPPER_CHUNK, "The most variants per call to try (the sweep's).")
_HERE = flags.DEFINE_bool("here", False, "Plan for this machine's devices instead of printing the table.")
_BUDGET = flags.DEFINE_float("memory_budget", 0, "With --here: bytes per device (0: 90% of the device's memory).")


@hosts.exit_at_once
def main(argv):
    del argv
    if _MODEL_CONFIG.value and len(_MODELS.value) != 1:
        raise app.UsageError("--model_config needs exactly one --model")
    dtype = jnp.dtype(_DTYPE.value)
    if _HERE.value:
        here(dtype)
        return
    jax.config.update("jax_platforms", "cpu")  # the table is an estimate from the CPU compiler, on any machine
    jax.config.update("jax_num_cpu_devices", 8)  # the stand-ins for a slice's devices; before any backend starts
    margin = h200_margin(_EMOTIONS.value) if not _MODEL_CONFIG.value else None
    rows = plan_rows(_MODELS.value, SLICES, _CLIP_SECONDS.value, dtype, _EMOTIONS.value, _CLIPS.value,
                     _MAX_VARIANTS.value, _MODEL_CONFIG.value or None, gpu_jump(margin) if margin else None)
    print(markdown(rows, _CLIP_SECONDS.value, dtype, margin))


def here(dtype):
    mesh = devices.mesh_from_flags()
    device = sharding.local_device(mesh)
    budget = sizing.budget(_BUDGET.value, device)
    shape = ",".join(f"{k}:{v}" for k, v in mesh.shape.items() if v > 1) or "data:1"
    source = "--memory_budget" if _BUDGET.value > 0 else f"{sizing.HEADROOM:.0%} of {sizing.device_memory(device)}"
    print(f"compiled for {jax.default_backend()} ({device.device_kind}), mesh {shape}, per device; budget {budget} "
          f"bytes ({source}); {dtype.name}, {_CLIP_SECONDS.value:g}-s clips, {_CLIPS.value} clips per data shard, "
          "no shared prefix")
    failed = []
    for model in _MODELS.value:
        config = real_config(model, _MODEL_CONFIG.value or None)
        length = sequence_length(model, _CLIP_SECONDS.value)
        try:
            p = plan_here(model, config, mesh, budget, _CLIPS.value, length, dtype, _EMOTIONS.value,
                          _MAX_VARIANTS.value)
        except ValueError as e:
            print(e)
            failed.append(model)
            continue
        more = "the upper bound" if p.next_bytes is None else f"{p.chunk + 1} variants need {p.next_bytes} bytes"
        print(f"{model}: {p.clips} clips × {p.chunk} variants = {p.sequences} sequences of {length} tokens per call; "
              f"{p.bytes} bytes per device ({more})")
    if failed:
        raise SystemExit(f"no call of {', '.join(failed)} fits {budget} bytes per device")


if __name__ == "__main__":
    app.run(main)
