r"""Prints the memory plan (see :mod:`experiments.memory`) as a Markdown table.

  python -m experiments.memory_plan [--clip_seconds=30 --compute_dtype=bfloat16 --emotions=7]
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments.memory import SLICES, markdown, plan_rows

_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", 30.0, "Clip length the activations are planned for.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["bfloat16", "float32"], "Parameter and activation dtype.")
_EMOTIONS = flags.DEFINE_integer("emotions", 7, "E, emotions in the statistics (MELD has 7).")


def main(argv):
    del argv
    jax.config.update("jax_num_cpu_devices", 8)  # the stand-ins for a slice's devices; before any backend starts
    dtype = jnp.dtype(_DTYPE.value)
    rows = plan_rows(("qwen2_5_omni", "audio_flamingo3", "kimi_audio"), SLICES, _CLIP_SECONDS.value, dtype,
                     _EMOTIONS.value)
    print(markdown(rows, _CLIP_SECONDS.value, dtype))


if __name__ == "__main__":
    app.run(main)
