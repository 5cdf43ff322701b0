r"""Benchmarks against the PyTorch + transformers hook baseline, on one machine in one run.

  python -m experiments.bench [--comparisons=sweep,gemm,equal_work,study,study_mini,memory,generate]
      [--shape=tiny|0.5b|7b --dtype=float32|bfloat16] [--clips=C --variants=V --length=T --torch_batch=8]
      [--study_clips=4 --study_masks=8] [--generate_clips=8 --generate_variants=8 --generate_tokens=16]
      [--markdown=PATH]

One module per comparison (``--comparisons``; the default runs the first seven):

* :mod:`.sweep` (``sweep``): masks/second of our vmapped sweep against a Python loop of our own jitted scoring;
* :mod:`.gemm` (``gemm``, alias ``peak``): the GEMM peak at ``--dtype`` in JAX and torch (and numpy);
* :mod:`.equal_work` (``equal_work``): C clips × V masks on a random decoder of ``--shape``, ours against
  transformers with down_proj hooks, mask by mask and ``--torch_batch`` masks per call;
* :mod:`.study` (``study``): the study's ablation + gain sweep on the shipped reference model;
* :mod:`.study_mini` (``study_mini``): the same on the mini-LALM (Whisper tiny.en + projector + SmolLM2-135M),
  against the hook loop with the encoder every time and once;
* :mod:`.capture_memory` (``memory``): peak resident-memory growth of streamed statistics against a full cache;
* :mod:`.generate` (``generate``): ``esn_jax.generate`` against transformers' ``generate`` on the mini-LALM, with
  the encoder every call and once (``inputs_embeds``);
* :mod:`.study_af3` (``study_af3``): Audio Flamingo 3 of ``--shape``, ours against transformers' full model per
  mask and its encoder once + ``inputs_embeds`` per mask;
* :mod:`.stats` (``stats``) and :mod:`.attribution` (``attribution``): ours only, seconds at ``--shape``.

``--shape`` and ``--dtype`` apply to gemm, equal_work, study_af3, stats and attribution (:mod:`.shapes`); the
others keep their own models, in float32. What they share (timing, FLOP counts, random models on both sides, the
down_proj hooks) is :mod:`.common`. The last lines printed are the ratios, one per line, ``name=value`` with three
decimals, in a fixed order (those of the comparisons run).

Each comparison against PyTorch names its baseline's form: *naive* as transformers' documentation runs it, *careful*
with the work a careful user would not repeat taken out (the encoder once per clip, masks batched). ``--markdown``
writes the invocation's headline table (:mod:`.table`): every comparison, both forms, the run's GEMM peaks, date,
commit, machine, versions and command; BENCHMARKS.md opens with one.
"""
