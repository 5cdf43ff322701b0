r"""Builds one of the emotion corpora as a tensorflow-datasets dataset (array_record, for tfds.data_source).

  python -m experiments.prepare_data --dataset=synthetic_prosody [--builder_config=small|large|tiny] [--data_dir=DIR]
  python -m experiments.prepare_data --dataset=crema_d_local --manual_dir=/data/CREMA-D [--data_dir=DIR]

Prints the split sizes and the build summary (every skipped file with its reason, every fix applied), which
is also saved as metadata.json in the dataset directory.
"""

from absl import app, flags

from esn_jax.data import BUILDERS
from esn_jax.data.prepare import prepare, summary

_DATASET = flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Which corpus to build.")
_CONFIG = flags.DEFINE_string("builder_config", None, "Builder config (default: the builder's first).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The user's copy of the release (not synthetic_prosody).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write (default: tfds' ~/tensorflow_datasets).")
_SHOW = flags.DEFINE_integer("show_skipped", 20, "How many skipped files to list by name.")
flags.mark_flag_as_required("dataset")


def main(argv):
    del argv
    try:
        builder = prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _CONFIG.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    print(summary(builder, _SHOW.value))


if __name__ == "__main__":
    app.run(main)
