r"""Trains the reference LALM (DESIGN §5): a small Qwen2.5-Omni thinker that answers an emotion question.

  python -m experiments.train_reference --out=DIR [--config=configs/reference.py[:tiny]] [--data_dir=DIR]
  python -m experiments.train_reference --out=esn_jax/reference/model --overwrite   # the shipped copy

The model, its training and what DIR holds: :mod:`esn_jax.reference.train` (DIR is written atomically).
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from esn_jax.reference.train import train, write

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parents[1] / "configs" / "reference.py"), "Training configuration.")
_OUT = flags.DEFINE_string("out", None, "The reference directory to write.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir of the corpus (default: tfds' own).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
flags.mark_flag_as_required("out")


def main(argv):
    del argv
    config, params, tokenizer, meta = train(_CONFIG.value, _DATA_DIR.value)
    out = write(_OUT.value, config, params, tokenizer, meta, _OVERWRITE.value)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
