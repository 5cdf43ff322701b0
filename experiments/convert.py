r"""Converts a Hugging Face checkpoint directory into an esn-jax checkpoint.

  python -m experiments.convert --model=qwen2 --hf_dir=/ckpt/Qwen2.5-7B --out=/ckpt/qwen2_5_7b_jax \
      [--dtype=float32|bfloat16] [--overwrite]
"""

from absl import app, flags

import ports
from ports.convert import DTYPES

_MODEL = flags.DEFINE_enum("model", None, sorted(ports.MODELS), "Which port the checkpoint is for.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Directory with config.json and *.safetensors.")
_OUT = flags.DEFINE_string("out", None, "Where to write the converted checkpoint (written atomically).")
_DTYPE = flags.DEFINE_enum("dtype", None, sorted(DTYPES), "Parameter dtype; default: the checkpoint's own.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.mark_flags_as_required(["model", "hf_dir", "out"])


def main(argv):
    del argv
    out = ports.convert(_HF_DIR.value, _OUT.value, _MODEL.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
