"""The memory plan: the largest scoring call (clips × variants) of each real model that fits a device, found by
compiling the call (``python -m experiments.memory_plan``): on the devices at hand (``--here``, the accurate number)
or, compiled on the CPU, for common GPU and TPU slices (the table, an estimate with a measured error margin).

A call's bytes are those of the program :func:`esn_jax.score_variants` runs — the vmapped variant chunk, label scoring
— compiled for the mesh with abstract parameters, nothing allocated (:mod:`esn_jax.sizing`), per device. It is planned
with no shared prompt prefix (``prefix_length=0``, the larger program) and single-token labels, one per emotion. The
model's statistics and Kimi-Audio's GLM-4-Voice speech tokenizer (:data:`AUXILIARY`, whole and in float32 on every
device) add to it. The batch is fixed at ``clips`` per data shard and the variant chunk searched
(:func:`esn_jax.sizing.largest_within`: false-position steps bracket it, bisection finishes): every size reported was
compiled and fits, one variant more was compiled and does not (or is :data:`UPPER_CHUNK`).

On the devices at hand the program is compiled in the planned dtype. For the table it is compiled on the CPU backend,
8 fake devices standing in for a slice's, in float32 with the temporaries scaled to the planned dtype: the CPU backend
upcasts bfloat16 matmuls (weights included) to float32 temporaries, which GPUs and TPUs do not, so a bfloat16 CPU
compile overstates them by far more (README: "Scale"). :func:`h200_margin` compares this estimate with XLA's own
temporaries of the same sweep on an H200 (:data:`H200_TEMP_GB`), which no CPU compile reproduces above ~800 sequences.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from esn_jax import sizing
from ports import sharding
from ports.audio import output_lengths
from ports.features import VOXTRAL_TOKENS_PER_WINDOW, WINDOW_SECONDS
from ports.models import abstract_params, spec

MODELS_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
GiB = 2**30
# Each model's released config.json in MODELS_DIR (the table plans the released sizes).
REAL_CONFIGS = {"qwen2_5_omni": "qwen2_5_omni_7b.config.json", "audio_flamingo3": "audio_flamingo3_7b.config.json",
                "kimi_audio": "kimi_audio_7b.config.json", "qwen2_audio": "qwen2_audio_7b_instruct.config.json",
                "voxtral": "voxtral_mini_3b.config.json"}
PROMPT_TOKENS = 64  # system prompt, question, chat markup around the audio placeholders
UPPER_CHUNK = 1024  # the most variants per call the plan tries (8192 sequences at 8 clips)

# XLA's compile-time temporary bytes (GB) of Audio Flamingo 3 7B's scoring sweep at 8 clips × 814 tokens in bfloat16,
# by sequences (clips × variants), on one NVIDIA H200 (jax 0.11.2, CUDA), as reported in the issue (measured by
# others, not here): 119 MB per sequence up to 768 sequences, 173 above; 928 sequences ran out of memory.
H200_TEMP_GB = {128: 15.3, 256: 30.6, 512: 60.8, 768: 91.2, 928: 160.6, 1008: 174.5}
H200_CLIPS = 8
H200_LINEAR_UP_TO = 768  # sequences per device: the largest measured call whose temporaries the CPU compile matched


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    devices: int
    bytes_per_device: float
    gpu: bool = False  # planned with the H200's jump above H200_LINEAR_UP_TO sequences per device (gpu_jump)


SLICES = (
    Slice("1× H100 80GB", 1, 80e9, gpu=True),
    Slice("8× H100 80GB", 8, 80e9, gpu=True),
    Slice("1× H200 141GB", 1, 141e9, gpu=True),
    Slice("TPU v5e-8 (16 GiB/chip)", 8, 16 * GiB),
    Slice("TPU v4-8 (32 GiB/chip)", 4, 32 * GiB),
    Slice("TPU v5p-8 (95 GiB/chip)", 4, 95 * GiB),
)

# A second network the study holds besides the model: the GLM-4-Voice tokenizer gives Kimi-Audio's prompts their
# codes. It runs in float32 (as the official code does) and unsharded, once per clip when the batches are built.
AUXILIARY = {"kimi_audio": "glm4_voice_tokenizer"}


def auxiliary_bytes(model: str) -> int:
    """Bytes of the float32 parameters of ``model``'s auxiliary network (0 without one), from its real config."""
    if model not in AUXILIARY:
        return 0
    aux = AUXILIARY[model]
    config = spec(aux).config_from_hf(json.loads((MODELS_DIR / f"{aux}.config.json").read_text()))
    _, abstract = abstract_params(aux, config, jnp.float32)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def real_config(model: str, path: str | Path | None = None):
    """The config of ``model`` from a Hugging Face config.json: ``path``, default its released one in configs/models
    (:data:`REAL_CONFIGS`)."""
    if path is None and model not in REAL_CONFIGS:
        raise ValueError(f"no real config.json of {model!r} in {MODELS_DIR} (known: {sorted(REAL_CONFIGS)}); pass one")
    main = json.loads(Path(path or MODELS_DIR / REAL_CONFIGS[model]).read_text())
    subs = [json.loads((MODELS_DIR / "whisper_large_v3.config.json").read_text())] if spec(model).subfolders else []
    return spec(model).config_from_hf(main, *subs)


def sequence_length(model: str, seconds: float) -> int:
    """Prompt tokens of one clip: audio tokens at the model's rate (DESIGN §3) + the text around them."""
    if model == "kimi_audio":
        audio = int(np.ceil(seconds * 12.5))
    elif model == "voxtral":  # whole 30-s windows, padding included: nothing is masked
        audio = VOXTRAL_TOKENS_PER_WINDOW * int(np.ceil(seconds / WINDOW_SECONDS))
    elif model == "qwen2_audio" and seconds > WINDOW_SECONDS:
        raise ValueError(f"qwen2_audio takes one {WINDOW_SECONDS}-s window per clip (ports.features.qwen2_audio "
                         f"refuses longer clips); got clip_seconds={seconds:g}")
    else:
        windows, rest = divmod(int(round(seconds * 100)), 3000)
        audio = windows * int(output_lengths(3000)) + (int(output_lengths(rest)) if rest else 0)
    return audio + PROMPT_TOKENS


def decoder_of(config):
    """The DecoderConfig inside a port's config (the decoder is what the variant axis multiplies)."""
    return getattr(config, "text", config)


class Sweeps:
    """Per-device bytes of one model's scoring calls for any mesh, batch and variant chunk; each compiled once.

    estimate: compile in float32 and scale the temporaries to ``dtype`` (the CPU standing in for accelerators);
    otherwise compile in ``dtype`` for the devices at hand.
    """

    def __init__(self, model: str, config, length: int, dtype, emotions: int, estimate: bool = False):
        decoder = decoder_of(config)
        self.model, self.config, self.length, self.dtype = model, config, length, jnp.dtype(dtype)
        self.compile_dtype = jnp.dtype(jnp.float32) if estimate else self.dtype
        self.labels = tuple((e,) for e in range(emotions))
        self.stats = emotions * decoder.num_hidden_layers * decoder.intermediate_size * 12  # int32 count + 2 float32
        self.auxiliary = auxiliary_bytes(model)
        self._abstract: dict = {}  # dtype -> (module, abstract parameters)
        self._footprints: dict = {}  # (mesh shape, batch, chunk) -> Footprint

    def params(self, mesh, dtype=None):
        """(module, parameters as ShapeDtypeStructs sharded by the rules over ``mesh``) in ``dtype`` (default: the
        planned one)."""
        dtype = jnp.dtype(dtype or self.dtype)
        if dtype not in self._abstract:
            self._abstract[dtype] = abstract_params(self.model, self.config, dtype)
        module, abstract = self._abstract[dtype]
        shardings = sharding.param_shardings(abstract, mesh)
        return module, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                                    shardings)

    def param_bytes(self, mesh) -> int:
        """Per device: the model's parameters in the planned dtype + the auxiliary network's."""
        return sizing.argument_bytes(self.params(mesh)[1]) + self.auxiliary

    def footprint(self, mesh, batch: int, chunk: int) -> sizing.Footprint:
        """The sweep's bytes per device for ``batch`` prompts (all data shards) × ``chunk`` variants."""
        key = (tuple(mesh.shape.items()), batch, chunk)
        if key not in self._footprints:
            module, params = self.params(mesh, self.compile_dtype)
            f = sizing.sweep_footprint(module, params, batch, self.length, chunk, self.labels, mesh=mesh)
            if self.compile_dtype != self.dtype:
                planned = sizing.sweep_arguments(*self.params(mesh), batch, self.length, chunk, mesh=mesh)
                scale = self.dtype.itemsize / self.compile_dtype.itemsize
                f = dataclasses.replace(f, arguments=sizing.argument_bytes(planned),
                                        temporaries=int(f.temporaries * scale))
            self._footprints[key] = f
        return self._footprints[key]

    def bytes(self, mesh, batch: int, chunk: int) -> int:
        """Everything the study holds per device during the call: the sweep + statistics + auxiliary network."""
        return self.footprint(mesh, batch, chunk).total + self.stats + self.auxiliary


@dataclasses.dataclass(frozen=True)
class Plan:
    """The largest call that fits: ``clips`` prompts (over all data shards) × ``chunk`` variants."""

    clips: int
    chunk: int  # 0: not even one variant fits
    bytes: int  # per device at ``chunk`` variants (at 1 when none fits)
    next_bytes: int | None  # per device at chunk + 1 variants; None when chunk is 0 or the upper bound
    budget: int

    @property
    def sequences(self) -> int:
        return self.clips * self.chunk


def plan(sweeps: Sweeps, mesh, clips: int, budget: int, upper: int = UPPER_CHUNK, jump: float | None = None) -> Plan:
    """The most variants per call on ``clips`` prompts per data shard within ``budget`` bytes per device.

    jump: for a GPU estimated on the CPU, the factor on the temporaries of calls of more than
    :data:`H200_LINEAR_UP_TO` sequences per device (:func:`gpu_jump`); None: the compiled bytes as they are.
    """
    batch = clips * mesh.shape["data"]

    def size(chunk):
        total = sweeps.bytes(mesh, batch, chunk)
        if jump and clips * chunk > H200_LINEAR_UP_TO:
            total += int(sweeps.footprint(mesh, batch, chunk).temporaries * (jump - 1))
        return total

    chunk = sizing.largest_within(size, budget, upper)
    return Plan(batch, chunk, size(max(chunk, 1)), size(chunk + 1) if 0 < chunk < upper else None, budget)


def plan_here(model: str, config, mesh, budget: int, clips: int, length: int, dtype, emotions: int,
              upper: int = UPPER_CHUNK) -> Plan:
    """The plan for the devices of ``mesh``, compiled for them in ``dtype``; a ValueError when not even one
    variant of ``clips`` prompts per data shard fits ``budget``, naming the budget and that program's bytes."""
    p = plan(Sweeps(model, config, length, dtype, emotions), mesh, clips, budget, upper)
    if not p.chunk:
        raise ValueError(
            f"{model}: a memory budget of {budget} bytes ({budget / 1e9:.3g} GB) per device is too small for one "
            f"variant of {clips} clip(s) per data shard: the smallest program, {p.clips} × 1 sequence(s) of {length} "
            f"tokens with the parameters and statistics, needs {p.bytes} bytes ({p.bytes / 1e9:.3g} GB) per device")
    return p


@functools.cache
def table_sweeps(model: str, seconds: float, dtype, emotions: int, config_path: str | None = None) -> Sweeps:
    """The table's (CPU-estimated) sweeps of a model (config: :func:`real_config`); shared by the rows and
    :func:`h200_margin`."""
    return Sweeps(model, real_config(model, config_path), sequence_length(model, seconds), dtype, emotions,
                  estimate=True)


def plan_rows(models, slices, seconds: float, dtype, emotions: int, clips: int = H200_CLIPS,
              upper: int = UPPER_CHUNK, config_path: str | None = None, jump: float | None = None) -> list[dict]:
    """One row per model, slice and mesh (all devices on ``data``, or on ``model`` for multi-device slices),
    estimated on this process's devices (8 CPU devices stand in for a slice's); GPU slices with ``jump``
    (:func:`gpu_jump`)."""
    rows = []
    for model in models:
        sweeps = table_sweeps(model, seconds, jnp.dtype(dtype), emotions, config_path)
        for sl in slices:
            for axis in ("data",) if sl.devices == 1 else ("data", "model"):
                mesh = sharding.make_mesh(**{axis: sl.devices})
                p = plan(sweeps, mesh, clips, int(sizing.HEADROOM * sl.bytes_per_device), upper,
                         jump if sl.gpu else None)
                rows.append(dict(model=model, slice=sl.name, mesh=f"{axis}:{sl.devices}", tokens=sweeps.length,
                                 params_gb=sweeps.param_bytes(mesh) / 1e9, stats_mb=sweeps.stats / 1e6,
                                 clips=p.clips, chunk=p.chunk, max_seqs=p.sequences, fits=p.chunk > 0,
                                 gb=p.bytes / 1e9, next_gb=None if p.next_bytes is None else p.next_bytes / 1e9))
    return rows


def h200_margin(emotions: int = 7) -> list[tuple[int, float, float]]:
    """The table's estimate against the H200's own compile (:data:`H200_TEMP_GB`): Audio Flamingo 3 7B's sweep at
    the measured sizes, bfloat16, one device -> [(sequences, our temporaries GB, the H200's GB)]."""
    sweeps = table_sweeps("audio_flamingo3", 30.0, jnp.dtype(jnp.bfloat16), emotions)
    mesh = sharding.make_mesh(data=1)
    return [(n, sweeps.footprint(mesh, H200_CLIPS, n // H200_CLIPS).temporaries / 1e9, gb)
            for n, gb in H200_TEMP_GB.items()]


def gpu_jump(margin: list[tuple[int, float, float]]) -> float:
    """How many times the CPU estimate's temporaries the H200 needed above :data:`H200_LINEAR_UP_TO` sequences (the
    largest ratio measured there): the factor GPU rows are planned with beyond that size."""
    return max(theirs / ours for n, ours, theirs in margin if n > H200_LINEAR_UP_TO)


def margin_text(margin: list[tuple[int, float, float]]) -> str:
    errors = [(n, ours / theirs - 1) for n, ours, theirs in margin]
    within = [e for n, e in errors if n <= H200_LINEAR_UP_TO]
    above = ", ".join(f"{e:+.0%} at {n}" for n, e in errors if n > H200_LINEAR_UP_TO)
    return (f"vs the H200's own compile of Audio Flamingo 3's sweep (XLA's temporaries at 8 clips × 814 tokens, "
            f"bfloat16, measured by others): {min(within):+.1%} … {max(within):+.1%} up to {H200_LINEAR_UP_TO} "
            f"sequences, {above} sequences, where the H200's compiler jumps from 119 to 173 MB per sequence and no "
            f"CPU compile does. GPU rows therefore plan calls of more than {H200_LINEAR_UP_TO} sequences per device "
            f"with {gpu_jump(margin):.2f}× the estimated temporaries (the H200's largest ratio there); on a GPU, "
            "`--here` plans with its own compiler")


def markdown(rows: list[dict], seconds: float, dtype, margin: list[tuple[int, float, float]] | None = None) -> str:
    backend = jax.default_backend()
    lines = [f"Per device, {np.dtype(dtype).name}, {seconds:g}-s clips, no shared prefix; the largest call = clips × "
             f"variants of one compiled scoring call over the whole slice ({H200_CLIPS} clips per data shard), "
             "compiled and fitting 90% of a device, one variant more compiled and not fitting (bytes in brackets). "
             f"Compiled for {backend} ({jax.device_count()} {backend} devices standing in for a slice's), in float32"
             + ("" if np.dtype(dtype) == np.float32 else f" with the temporaries scaled to {np.dtype(dtype).name}")
             + (f"; {margin_text(margin)}." if margin else "."), "",
             "| model | slice | mesh | tokens/clip | params/device | stats | largest call: clips × variants "
             "| sequences | bytes/device (one more variant) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["fits"]:
            size = f"{r['clips']} × {r['chunk']}"
            more = "upper bound" if r["next_gb"] is None else f"{r['next_gb']:.1f} GB"
            used = f"{r['gb']:.1f} GB ({more})"
        else:
            size, used = "does not fit", f"{r['gb']:.1f} GB at {r['clips']} × 1"
        lines.append(f"| {r['model']} | {r['slice']} | {r['mesh']} | {r['tokens']} | {r['params_gb']:.1f} GB | "
                     f"{r['stats_mb']:.0f} MB | {size} | {r['max_seqs'] if r['fits'] else '—'} | {used} |")
    return "\n".join(lines)
