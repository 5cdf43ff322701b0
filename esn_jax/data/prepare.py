"""Building a corpus and summarising the build (what ``python -m experiments.prepare_data`` runs)."""

from __future__ import annotations

import collections

import tensorflow_datasets as tfds

from esn_jax.data import BUILDERS


def prepare(dataset: str, manual_dir: str | None = None, data_dir: str | None = None, config: str | None = None):
    """Builds ``dataset`` and returns its builder; raises ManualDirError for a manual_dir without the release."""
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; builders: {sorted(BUILDERS)}")
    cls = BUILDERS[dataset]
    if cls.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
        raise ValueError(f"dataset {dataset} reads a local copy; pass manual_dir (--manual_dir):\n"
                         f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    builder = cls(data_dir=data_dir, config=config)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder


def summary(builder, show: int = 20) -> str:
    """Split sizes, skipped files with their reasons (the first ``show`` by name) and the fixes applied."""
    lines = [f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''} -> {builder.data_dir}"]
    lines += [f"  {name}: {info.num_examples} examples" for name, info in builder.info.splits.items()]
    meta = builder.info.metadata or {}
    skipped = meta.get("skipped", {"counts": {}, "files": []})
    lines.append(f"  skipped: {sum(skipped['counts'].values())} {dict(collections.Counter(skipped['counts']))}")
    lines += [f"    {s['split']} {s['file']}: {s['reason']} ({s['detail']})" for s in skipped["files"][:show]]
    if "fixed" in meta:
        lines.append(f"  fixed: {meta['fixed']}")
    if "cross_check" in meta:  # ESD: the folder's label against the speaker's transcript
        check = meta["cross_check"]
        lines.append(f"  labels cross-checked: {check['agree']} agree, {check['disagree']} disagree, "
                     f"{check['no_txt_line']} without a transcript line")
    return "\n".join(lines)
