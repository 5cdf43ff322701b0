"""``python -m experiments.bench``: the flags, and the comparisons run in order (see the package's docstring)."""

import os

import jax
from absl import app, flags

from experiments.bench import (
    attribution,
    capture_memory,
    common,
    equal_work,
    gemm,
    generate,
    shapes,
    stats,
    study,
    study_af3,
    study_mini,
    sweep,
    table,
)

DEFAULT = ["sweep", "gemm", "equal_work", "study", "study_mini", "memory", "generate"]
COMPARISONS = (*DEFAULT, "peak", "study_af3", "stats", "attribution")  # peak: gemm's former name
RATIOS = ("ratio_sweep", "ratio_equal_work", "ratio_study", "peak_fraction", "capture_memory_ratio",
          "ratio_study_mini", "ratio_generate", "ratio_equal_work_batched", "ratio_study_af3",
          "ratio_study_af3_encoder_once", "ratio_study_mini_encoder_once", "ratio_generate_careful")

_SHAPE = flags.DEFINE_enum("shape", "0.5b", shapes.SHAPES, "models and default sizes of gemm, equal_work, "
                           "study_af3, stats and attribution (experiments/bench/shapes.py)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", common.DTYPES, "dtype of gemm, equal_work, study_af3, "
                           "stats and attribution")
_CLIPS = flags.DEFINE_integer("clips", None, "C: clips of equal_work, study_af3 and stats (default: the shape's)")
_VARIANTS = flags.DEFINE_integer("variants", None, "V: masks of equal_work and study_af3 (default: the shape's)")
_LENGTH = flags.DEFINE_integer("length", None, "tokens per clip of equal_work, stats and attribution (default: the "
                               "shape's); of memory (default 128)")
_ATTRIBUTION_CLIPS = flags.DEFINE_integer("attribution_clips", None, "clips of attribution (default: the shape's)")
_TORCH_BATCH = flags.DEFINE_integer("torch_batch", 8, "masks per transformers call in equal_work's batched loop")
_CHUNK = flags.DEFINE_integer("chunk_size", 8, "variants per vmapped step of our sweep")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions; the best is kept")
_MEMORY_CLIPS = flags.DEFINE_list("memory_clips", ["16", "64"], "clip counts of the memory comparison")
_PROBE = flags.DEFINE_enum("probe", None, ["streaming", "cache"], "internal: run one memory probe and exit")
_STUDY_CLIPS = flags.DEFINE_integer("study_clips", 4, "clips of the mini-LALM study-stage comparison")
_STUDY_MASKS = flags.DEFINE_integer("study_masks", 8, "masks of the mini-LALM study-stage comparison: every "
                                    "emotion's ablation, then its gains at 0.5, 1, 2, 4, 8, in that order")
_MINI_LALM = flags.DEFINE_string("mini_lalm", None, "mini-LALM directory (default: the shipped one)")
_GENERATE_CLIPS = flags.DEFINE_integer("generate_clips", 8, "clips of the mini-LALM generation comparison")
_GENERATE_VARIANTS = flags.DEFINE_integer("generate_variants", 8, "interventions of the generation comparison")
_GENERATE_TOKENS = flags.DEFINE_integer("generate_tokens", 16, "new tokens per row in the generation comparison")
_COMPARISONS = flags.DEFINE_list("comparisons", DEFAULT, f"which comparisons to run, of {', '.join(COMPARISONS)}")
_MARKDOWN = flags.DEFINE_string("markdown", None, "also write this invocation's headline table (Markdown) to this "
                                "path; runs gemm too, for the machine's GEMM peaks")
flags.register_validator("comparisons", lambda names: set(names) <= set(COMPARISONS),
                         f"--comparisons takes names of {COMPARISONS}")


def main(argv):
    del argv
    # torch shares an accelerator with JAX, whose default reserves 75% of its memory when the backend starts (on
    # first use, after this line).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    memory_length = _LENGTH.value or 128
    if _PROBE.value:
        capture_memory.probe(_PROBE.value, int(_MEMORY_CLIPS.value[0]), memory_length)
        return
    if _DTYPE.value == "float32":  # full float32 products on both sides (XLA would use TF32 on GPUs, torch does not)
        jax.config.update("jax_default_matmul_precision", "highest")
    run = set(_COMPARISONS.value) | ({"gemm"} if "peak" in _COMPARISONS.value or _MARKDOWN.value else set())
    shape, dtype, repeats, chunk = shapes.shape(_SHAPE.value), _DTYPE.value, _REPEATS.value, _CHUNK.value
    clips, variants = _CLIPS.value or shape.clips, _VARIANTS.value or shape.variants
    length = _LENGTH.value or shape.length
    ratios, rows, peaks = {}, [], ""
    device = f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})"
    print(f"machine: {device}, jax {jax.__version__}, torch on {common.torch_device()}; shape {shape.name}, {dtype}")

    def show(lines):
        print("\n".join(lines), flush=True)

    if "sweep" in run:
        fast, loop = sweep.run(repeats)
        show(sweep.describe(fast, loop))
        rows.extend(sweep.rows(fast, loop))
        ratios["ratio_sweep"] = fast / loop
    if "gemm" in run or "equal_work" in run:
        rates = gemm.rates(shape.gemm_sizes, dtype, repeats)
        (peaks,) = gemm.describe(rates, shape.gemm_sizes, dtype)
        show([peaks])
        peak = max(rates.values())
    if "equal_work" in run:
        work = equal_work.run(shape, dtype, clips, variants, length, chunk, _TORCH_BATCH.value, repeats)
        show(equal_work.describe(work, peak))
        rows.extend(equal_work.rows(work, peak))
        ratios["ratio_equal_work"] = work["theirs_s"] / work["ours_s"]
        ratios["ratio_equal_work_batched"] = work["batched_s"] / work["ours_s"]
        ratios["peak_fraction"] = work["flops"] / work["ours_s"] / peak
        common.free_torch()
    if "study" in run:
        result = study.run(chunk, repeats)
        show(study.describe(result))
        rows.extend(study.rows(result))
        ratios["ratio_study"] = result["theirs_s"] / result["ours_s"]
    if "study_mini" in run:
        mini = study_mini.run(_STUDY_CLIPS.value, _STUDY_MASKS.value, chunk, repeats, _MINI_LALM.value)
        show(study_mini.describe(mini))
        rows.extend(study_mini.rows(mini))
        ratios["ratio_study_mini"] = mini["theirs_s"] / mini["ours_s"]
        ratios["ratio_study_mini_encoder_once"] = mini["theirs_encoder_once_s"] / mini["ours_s"]
    if "memory" in run:
        counts = [int(c) for c in _MEMORY_CLIPS.value]
        mem = capture_memory.measure(counts, memory_length)
        show(capture_memory.describe(mem, counts, memory_length))
        rows.extend(capture_memory.rows(mem, counts, memory_length))
        largest = max(counts)
        ratios["capture_memory_ratio"] = mem[("cache", largest)] / max(mem[("streaming", largest)], 1)
    if "generate" in run:
        module, params, _, inputs, hf, prompt = study_mini.mini_lalm_clips(_GENERATE_CLIPS.value, _MINI_LALM.value)
        gen = generate.compare(module, params, hf, inputs, prompt, variants=_GENERATE_VARIANTS.value,
                               tokens=_GENERATE_TOKENS.value, repeats=repeats, chunk_size=chunk)
        show(generate.describe(gen))
        rows.extend(generate.rows(gen))
        ratios["ratio_generate"] = gen["theirs_s"] / gen["ours_s"]
        ratios["ratio_generate_careful"] = gen["careful_s"] / gen["ours_s"]
    if "study_af3" in run:
        af3 = study_af3.run(shape, dtype, clips, variants, chunk, repeats)
        show(study_af3.describe(af3))
        rows.extend(study_af3.rows(af3))
        ratios["ratio_study_af3"] = af3["theirs_s"] / af3["ours_s"]
        ratios["ratio_study_af3_encoder_once"] = af3["encoder_once_s"] / af3["ours_s"]
        common.free_torch()
    if "stats" in run or "attribution" in run:
        module, params = common.random_model(shape.decoder, dtype)
        if "stats" in run:
            result = stats.run(shape, module, params, clips, length, repeats)
            show(stats.describe(result))
            rows.extend(stats.rows(result))
        if "attribution" in run:
            attribution_clips = _ATTRIBUTION_CLIPS.value or shape.attribution_clips
            result = attribution.run(shape, module, params, attribution_clips, length, repeats)
            show(attribution.describe(result))
            rows.extend(attribution.rows(result))
    for name in RATIOS:
        if name in ratios:
            print(table.ratio_line(name, ratios[name]))
    if _MARKDOWN.value:
        table.write(_MARKDOWN.value, table.markdown(rows, ratios, peaks, device, common.torch_device()))


if __name__ == "__main__":
    app.run(main)
