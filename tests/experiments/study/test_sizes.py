"""The study sizes itself (experiments/study/sizes.py): the variant chunk and batch size chosen from the compiled
programs' memory analysis, and the guard that halves a chunk that does not fit, checked on CPU by forcing a small
memory budget on a tiny random Qwen2.5-Omni thinker (tests/experiments/tiny_reference.py).

The expected sizes are recomputed here with esn_jax.sizing.sweep_bytes, and every halved run is compared bit for
bit with a run at the smaller chunk from the start.
"""

import json
import logging

import jax
import numpy as np
import pytest

import esn_jax
from configs.study import get_config
from esn_jax import sizing
from esn_jax.data import pipeline
from experiments.study import adapters, sizes, stages
from ports import sharding
from ports.features import SAMPLE_RATE
from tests.experiments import tiny_reference

V = 10  # variants: not a multiple of any chunk tried, so the last call of each run is padded


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return tiny_reference.build(tmp_path_factory.mktemp("sizes") / "ref")


def context(ref, workdir, **keys) -> stages.Context:
    args = ",".join(f"{k}={v}" for k, v in dict(checkpoint=ref, batch_size=4, buckets=4, **keys).items())
    cfg = get_config(args)
    return stages.Context(cfg, stages.Store(workdir, cfg), adapters.load_model(cfg))


@pytest.fixture(scope="module")
def batch(ref, tmp_path_factory):
    """One batch of four one-second noise clips, as the study stores it."""
    ctx = context(ref, tmp_path_factory.mktemp("batch"))
    rng = np.random.default_rng(0)
    clips = [pipeline.Example(rng.normal(0, 0.1, SAMPLE_RATE).astype(np.float32), i, "s", f"c{i}") for i in range(4)]
    return next(adapters.batches(ctx.model, clips, ctx.cfg))


@pytest.fixture(scope="module")
def edits():
    rng = np.random.default_rng(1)
    return esn_jax.ablate(rng.random((V, 2, 64)) < 0.3)  # [V, L, I] of the tiny model


def program_bytes(ctx, batch, chunk: int, rows: int | None = None) -> int:
    """The sweep's bytes at ``chunk`` variants per call, from esn_jax.sizing directly."""
    b, t = batch["input_ids"].shape
    return sizing.sweep_bytes(ctx.model.module, ctx.model.params, rows or b, t, chunk, ctx.model.label_token_ids,
                              drift=True)  # the study's sweeps measure drift


def test_chunk_over_budget_is_halved_before_its_first_call(ref, batch, edits, tmp_path, caplog):
    """variant_chunk=8 under a budget that refuses 8 and 4 but admits 2: halved twice before any call, logged,
    recorded, and the log-probs are bit for bit those of variant_chunk=2 from the start."""
    probe = context(ref, tmp_path / "probe")
    two, four, eight = (program_bytes(probe, batch, c) for c in (2, 4, 8))
    assert two < four < eight  # the budget below can tell them apart
    ctx = context(ref, tmp_path / "halved", variant_chunk=8, memory_budget=two)
    with caplog.at_level(logging.WARNING):
        got = ctx.score(batch, edits)["logp"]
    want = context(ref, tmp_path / "two", variant_chunk=2).score(batch, edits)["logp"]
    assert got.shape == (V, 4, len(tiny_reference.LABELS)) and np.array_equal(got, want)
    halvings = [r.getMessage() for r in caplog.records if "halved to" in r.getMessage()]
    assert len(halvings) == 2 and "8 variants per call do not fit" in halvings[0] and halvings[1].endswith("to 2")
    (entry,) = ctx.sizer.summary()["programs"]
    assert (entry["requested"], entry["chunk"], entry["bytes"]) == (8, 2, two)
    assert [(h["from"], h["to"]) for h in entry["halved"]] == [(8, 4), (4, 2)]
    assert ctx.store.load_json("sizing")["programs"] == ctx.sizer.record["programs"]  # kept for a resumed run


def test_out_of_memory_halves_and_goes_on_where_it_stopped(ref, batch, edits, tmp_path, monkeypatch, caplog):
    """A call that runs out of device memory (the second, at variants 4-7 of chunk 4) halves the chunk and the loop
    goes on at variant 4: no variant is scored twice, the first four keep chunk 4's outputs and the rest are bit for
    bit chunk 2's."""
    calls = []
    score = esn_jax.score_variants

    def flaky(module, params, embedded, part, label_ids, **kw):
        first = np.asarray(part["gate_act"]["scale"][0])
        start = next(i for i in range(V) if np.array_equal(first, np.asarray(edits["gate_act"]["scale"][i])))
        calls.append((start, len(part["gate_act"]["scale"])))
        if len(calls) == 2:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 bytes.")
        return score(module, params, embedded, part, label_ids, **kw)

    ctx = context(ref, tmp_path / "oom", variant_chunk=4)
    monkeypatch.setattr(esn_jax, "score_variants", flaky)
    with caplog.at_level(logging.WARNING):
        got = ctx.score(batch, edits)["logp"]
    monkeypatch.undo()
    assert calls == [(0, 4), (4, 4), (4, 2), (6, 2), (8, 2)]
    assert any("out of memory at variant 4" in r.getMessage() for r in caplog.records)
    assert np.array_equal(got[:4], context(ref, tmp_path / "four", variant_chunk=4).score(batch, edits)["logp"][:4])
    assert np.array_equal(got[4:], context(ref, tmp_path / "two", variant_chunk=2).score(batch, edits)["logp"][4:])
    (entry,) = ctx.sizer.summary()["programs"]
    assert entry["chunk"] == 2 and entry["halved"][0]["why"] == "out of memory at variant 4"


def test_other_runtime_errors_are_not_taken_for_memory(ref, batch, edits, tmp_path, monkeypatch):
    def broken(*args, **kw):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    ctx = context(ref, tmp_path, variant_chunk=4)
    monkeypatch.setattr(esn_jax, "score_variants", broken)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        ctx.score(batch, edits)
    assert ctx.sizer.summary()["programs"][0]["halved"] == []


def test_budget_below_one_variant_is_named(ref, batch, edits, tmp_path):
    b, t = batch["input_ids"].shape
    for chunk in ("auto", 4):
        ctx = context(ref, tmp_path / str(chunk), variant_chunk=chunk, memory_budget=1000)
        smallest = program_bytes(ctx, batch, 1)
        with pytest.raises(ValueError, match=rf"memory_budget=1000 bytes per device is smaller than the smallest "
                                             rf"sweep program \(1 variant × {b} × {t}\): {smallest} bytes"):
            ctx.score(batch, edits)


def test_auto_chunk_is_the_largest_that_fits(ref, batch, edits, tmp_path):
    """variant_chunk=auto: under a budget between two sizes, the largest chunk whose program fits (bit for bit that
    chunk's run); under the CPU's own budget, every variant in one call."""
    probe = context(ref, tmp_path / "probe")
    budget = (program_bytes(probe, batch, 3) + program_bytes(probe, batch, 4)) // 2  # admits 3 per call, not 4
    ctx = context(ref, tmp_path / "auto", memory_budget=budget)
    got = ctx.score(batch, edits)["logp"]
    (entry,) = ctx.sizer.summary()["programs"]
    chunk = entry["chunk"]
    assert (entry["requested"], entry["halved"]) == ("auto", [])
    assert program_bytes(probe, batch, chunk) <= budget < program_bytes(probe, batch, chunk + 1)
    assert np.array_equal(got, context(ref, tmp_path / "fixed", variant_chunk=chunk).score(batch, edits)["logp"])
    roomy = context(ref, tmp_path / "roomy")
    roomy.score(batch, edits)
    assert roomy.sizer.summary()["programs"][0]["chunk"] == V
    assert roomy.sizer.budget == int(sizing.HEADROOM * sizing.device_memory())


def test_auto_batch_size(ref, batch, tmp_path):
    """The largest batch whose one-variant sweep fits, at most the cap; under a mesh, a multiple of its data axis,
    sized per device."""
    t = batch["input_ids"].shape[1]
    probe = context(ref, tmp_path / "probe")
    budget = program_bytes(probe, batch, 1, rows=5)
    ctx = context(ref, tmp_path / "auto", memory_budget=budget)
    n = ctx.sizer.batch_size(t, 16)
    assert program_bytes(probe, batch, 1, rows=n) <= budget < program_bytes(probe, batch, 1, rows=n + 1)
    assert context(ref, tmp_path / "roomy").sizer.batch_size(t, 12) == 12  # the cap
    mesh = sharding.make_mesh(data=2)
    cfg = get_config(f"checkpoint={ref},memory_budget={budget}")
    meshed = sizes.Sizer(adapters.load_model(cfg, mesh), "auto", budget, mesh=mesh)
    m = meshed.batch_size(t, 16)
    module, params = ctx.model.module, sharding.shard_params(ctx.model.params, mesh)
    per_device = sizing.sweep_bytes(module, sizes.abstract(params, mesh), m, t, 1, ctx.model.label_token_ids,
                                    mesh=mesh, drift=True)
    assert m % 2 == 0 and m > n and per_device <= budget  # rows split over two devices: more fit


def test_config_sizes():
    default = get_config()
    assert (default.variant_chunk, default.memory_budget, default.batch_size) == ("auto", 0, 16)
    cfg = get_config("variant_chunk=8,batch_size=auto,memory_budget=8e9")
    assert (cfg.variant_chunk, cfg.batch_size, cfg.memory_budget) == (8, "auto", 8_000_000_000)
    for bad, named in (("variant_chunk=0", "variant_chunk=0 must be an int >= 1 or 'auto'"),
                       ("batch_size=some", "batch_size='some' must be an int >= 1 or 'auto'"),
                       ("memory_budget=-1", "memory_budget=-1 must be a number of bytes >= 0"),
                       ("memory_budget=lots", "memory_budget='lots' is not an integer")):
        with pytest.raises(ValueError, match=named):
            get_config(bad)
    # "auto" stays as written (not the number it resolves to), and so does the hash naming the run directory
    assert json.loads(json.dumps(default.to_dict()))["variant_chunk"] == "auto"
