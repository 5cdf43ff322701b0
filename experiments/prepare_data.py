r"""Builds one of the emotion corpora as a tensorflow-datasets dataset (array_record, for tfds.data_source).

  python -m experiments.prepare_data --dataset=synthetic_prosody [--config=small|large] [--data_dir=DIR]
  python -m experiments.prepare_data --dataset=crema_d_local --manual_dir=/data/CREMA-D [--data_dir=DIR]

Prints the split sizes and the build summary (every skipped file with its reason, every fix applied), which
is also saved as metadata.json in the dataset directory.
"""

from __future__ import annotations

import collections

import tensorflow_datasets as tfds
from absl import app, flags

from esn_jax.data import BUILDERS

_DATASET = flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Which corpus to build.")
_CONFIG = flags.DEFINE_string("config", None, "Builder config (default: the builder's first).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The user's copy of the release (not synthetic_prosody).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write (default: tfds' ~/tensorflow_datasets).")
_SHOW = flags.DEFINE_integer("show_skipped", 20, "How many skipped files to list by name.")
flags.mark_flag_as_required("dataset")


def prepare(dataset: str, manual_dir: str | None = None, data_dir: str | None = None, config: str | None = None):
    """Builds ``dataset`` and returns its builder; raises ManualDirError for a manual_dir without the release."""
    cls = BUILDERS[dataset]
    if cls.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
        raise app.UsageError(f"--dataset={dataset} reads a local copy; pass --manual_dir:\n"
                             f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    builder = cls(data_dir=data_dir, config=config)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder


def summary(builder, show: int = 20) -> str:
    lines = [f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''} -> {builder.data_dir}"]
    lines += [f"  {name}: {info.num_examples} examples" for name, info in builder.info.splits.items()]
    meta = builder.info.metadata or {}
    skipped = meta.get("skipped", {"counts": {}, "files": []})
    lines.append(f"  skipped: {sum(skipped['counts'].values())} {dict(collections.Counter(skipped['counts']))}")
    lines += [f"    {s['split']} {s['file']}: {s['reason']} ({s['detail']})" for s in skipped["files"][:show]]
    if "fixed" in meta:
        lines.append(f"  fixed: {meta['fixed']}")
    return "\n".join(lines)


def main(argv):
    del argv
    builder = prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _CONFIG.value)
    print(summary(builder, _SHOW.value))


if __name__ == "__main__":
    app.run(main)
