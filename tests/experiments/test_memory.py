"""The memory plan's pieces against direct compiles (tests run with 8 CPU devices: tests/conftest.py). The script
defines flags, so it runs as a subprocess (tests/experiments/test_scripts.py)."""

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ports
from esn_jax import sizing
from experiments import memory as memory_plan
from ports import sharding

ROOT = Path(__file__).resolve().parents[2]

TINY = ports.DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def design_tokens(frames: int) -> int:
    """DESIGN §3: N = ((T − 1) // 2 + 1 − 2) // 2 + 1 audio tokens for T mel frames."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def test_sequence_lengths_follow_the_token_rates():
    assert memory_plan.sequence_length("qwen2_5_omni", 30) == design_tokens(3000) + memory_plan.PROMPT_TOKENS
    assert memory_plan.sequence_length("audio_flamingo3", 75) == (2 * design_tokens(3000) + design_tokens(1500)
                                                                  + memory_plan.PROMPT_TOKENS)
    assert memory_plan.sequence_length("kimi_audio", 30) == 375 + memory_plan.PROMPT_TOKENS
    # Qwen2-Audio: one window, counted on the clip's frames as AF3's; Voxtral: 375 per started 30-s window
    # (mistral-common's 12.5 Hz over the zero-padded windows).
    assert memory_plan.sequence_length("qwen2_audio", 30) == design_tokens(3000) + memory_plan.PROMPT_TOKENS
    assert memory_plan.sequence_length("qwen2_audio", 12.3) == design_tokens(1230) + memory_plan.PROMPT_TOKENS
    with pytest.raises(ValueError, match="qwen2_audio takes one 30-s window per clip"):
        memory_plan.sequence_length("qwen2_audio", 31)
    for seconds, windows in ((1, 1), (30, 1), (30.5, 2), (75, 3)):
        assert memory_plan.sequence_length("voxtral", seconds) == 375 * windows + memory_plan.PROMPT_TOKENS


def test_every_study_model_has_its_real_config():
    """The plan's default models are the study's, each read from its released config.json; the two whose files are
    named apart (Qwen2-Audio-7B-Instruct, Voxtral-Mini-3B) have their released sizes."""
    from configs.study import MODELS

    assert tuple(memory_plan.REAL_CONFIGS) == MODELS
    configs = {m: memory_plan.real_config(m) for m in MODELS}
    qwen, voxtral = configs["qwen2_audio"], configs["voxtral"]
    assert (qwen.text.hidden_size, qwen.text.num_hidden_layers, qwen.text.model_type) == (4096, 32, "qwen2")
    assert (voxtral.text.hidden_size, voxtral.text.num_hidden_layers, voxtral.text.model_type) == (3072, 30, "llama")
    assert voxtral.tokens_per_window == 375 and qwen.audio.pool and not voxtral.audio.pool
    with pytest.raises(ValueError, match="no real config.json of 'qwen2'"):
        memory_plan.real_config("qwen2")


def test_parameter_bytes_are_the_shards_actually_placed():
    mesh = sharding.make_mesh(data=2, model=4)
    module = ports.Qwen2ForCausalLM(TINY)
    params = module.init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
    placed = sharding.shard_params(params, mesh)
    on_device_0 = sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards
                      if s.device == jax.devices()[0])
    assert sharding.bytes_per_device(params, sharding.param_shardings(params, mesh)) == on_device_0


def stats_bytes(config, emotions: int) -> int:
    """The statistics the study holds: per emotion, layer and neuron an int32 count and two float32 moments."""
    return emotions * config.num_hidden_layers * config.intermediate_size * (4 + 4 + 4)


@functools.cache
def direct_bytes(config, dtype, mesh, clips: int, length: int, chunk: int, emotions: int) -> int:
    """Per device: the sweep of ``clips`` prompts per data shard × ``chunk`` variants, compiled here by
    esn_jax.sizing with one single-token label per emotion, + the statistics."""
    module, abstract = ports.models.abstract_params("qwen2", config, dtype)
    shardings = sharding.param_shardings(abstract, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    labels = tuple((e,) for e in range(emotions))
    batch = clips * mesh.shape["data"]
    return sizing.sweep_bytes(module, params, batch, length, chunk, labels, mesh=mesh) + stats_bytes(config, emotions)


def test_the_answer_fits_and_one_variant_more_does_not():
    mesh = sharding.make_mesh(data=2, model=2)
    args = (TINY, jnp.dtype(jnp.float32), mesh, 2, 24)
    budget = (direct_bytes(*args, 3, 4) + direct_bytes(*args, 4, 4)) // 2
    plan = memory_plan.plan_here("qwen2", TINY, mesh, budget, 2, 24, jnp.float32, 4, upper=4)
    assert plan.clips == 2 * mesh.shape["data"]
    assert plan.chunk > 0 and plan.sequences == plan.clips * plan.chunk
    assert direct_bytes(*args, plan.chunk, 4) == plan.bytes <= budget
    assert direct_bytes(*args, plan.chunk + 1, 4) == plan.next_bytes > budget


def test_a_budget_too_small_for_one_sequence_is_named():
    mesh = sharding.make_mesh(data=1)
    smallest = direct_bytes(TINY, jnp.dtype(jnp.float32), mesh, 1, 24, 1, 4)
    with pytest.raises(ValueError, match=f"budget of 1000 bytes .* needs {smallest} bytes"):
        memory_plan.plan_here("qwen2", TINY, mesh, 1000, 1, 24, jnp.float32, 4, upper=8)


def here_command(tmp_path, data: int) -> tuple[list[str], int, int, int]:
    """``memory_plan --here`` on TINY (bfloat16, 1-s clips, 2 clips per data shard, at most 4 variants) with a budget
    between the bytes of 2 and of 3 variants, measured here on a data:``data`` mesh -> (arguments, prompt length,
    bytes of 2 variants, of 3)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY.to_hf()))
    length = memory_plan.sequence_length("qwen2", 1.0)
    mesh = sharding.make_mesh(data=data)
    two, three = (direct_bytes(TINY, jnp.dtype(jnp.bfloat16), mesh, 2, length, n, 7) for n in (2, 3))
    return ([sys.executable, "-m", "experiments.memory_plan", "--here", "--model=qwen2", f"--model_config={config}",
             "--clip_seconds=1", "--clips=2", "--max_variants=4", f"--memory_budget={(two + three) // 2}"],
            length, two, three)


def test_here_on_this_machine_prints_the_largest_call(tmp_path):
    """The script on its own process's one CPU device."""
    command, length, two, three = here_command(tmp_path, 1)
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "compiled for cpu" in run.stdout
    assert re.search(rf"^qwen2: 2 clips × 2 variants = 4 sequences of {length} tokens per call; {two} bytes",
                     run.stdout, re.M), run.stdout
    assert f"3 variants need {three} bytes" in run.stdout


def test_here_in_a_process_group_plans_the_group_mesh(tmp_path):
    """Under the launcher (2 processes × 2 CPU devices) each process compiles the group's data:4 mesh and prints the
    plan measured here for one process's data:4 mesh."""
    command, length, two, three = here_command(tmp_path, 4)
    run = subprocess.run([sys.executable, "-m", "experiments.launch", "--processes=2", "--devices_per_process=2",
                          f"--logs={tmp_path / 'logs'}", "--timeout=300", "--", *command],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    for i in range(2):
        log = (tmp_path / "logs" / f"process_{i}.log").read_text()
        assert "mesh data:4" in log, log
        assert re.search(rf"^qwen2: 8 clips × 2 variants = 16 sequences of {length} tokens per call; {two} bytes",
                         log, re.M), log
        assert f"3 variants need {three} bytes" in log


def test_plan_of_a_real_model():
    """The table's rows of Qwen2.5-Omni 7B (compiled on the CPU, a chunk of at most one variant tried)."""
    slices = (memory_plan.Slice("one 80 GB", 1, 80e9), memory_plan.Slice("eight 16 GiB", 8, 16 * 2**30))
    rows = memory_plan.plan_rows(("qwen2_5_omni",), slices, 30.0, jnp.dtype(jnp.bfloat16), 4, upper=1)
    assert [(r["slice"], r["mesh"]) for r in rows] == [("one 80 GB", "data:1"), ("eight 16 GiB", "data:8"),
                                                       ("eight 16 GiB", "model:8")]
    whole, split = rows[1]["params_gb"], rows[2]["params_gb"]
    assert 16 < whole < 18 and split < whole / 7  # 8.3B bf16 parameters do not fit a 16 GiB chip unsplit
    assert not rows[1]["fits"] and rows[2]["fits"] and rows[2]["max_seqs"] == 8 == rows[0]["max_seqs"]
    assert rows[0]["next_gb"] is None  # the upper bound
    assert "does not fit" in memory_plan.markdown(rows, 30.0, jnp.bfloat16)


def test_kimi_rows_hold_the_speech_tokenizer():
    """Kimi-Audio's plan adds the GLM-4-Voice tokenizer's float32 parameters, counted here by hand from DESIGN §3's
    sizes (d 1280, 20 heads, ffn 5120, 16 of 32 layers, 128 mels, 1500 positions, 16384 codes, no final norm)."""
    d, ffn, mels = 1280, 5120, 128
    layer = 3 * d * d + 2 * d + d * d + d + 2 * 2 * d + d * ffn + ffn + ffn * d + d  # q k v (no k bias), o, 2 LN, fc
    count = mels * d * 3 + d + d * d * 3 + d + 1500 * d + 16 * layer + 16384 * d
    assert memory_plan.auxiliary_bytes("kimi_audio") == 4 * count
    assert memory_plan.auxiliary_bytes("qwen2_5_omni") == 0
    one = (memory_plan.Slice("one 80 GB", 1, 80e9),)
    row = memory_plan.plan_rows(("kimi_audio",), one, 30.0, jnp.dtype(jnp.bfloat16), 4, upper=1)[0]
    _, abstract = memory_plan.abstract_params("kimi_audio", memory_plan.real_config("kimi_audio"), jnp.bfloat16)
    kimi = sum(x.size * 2 for x in jax.tree.leaves(abstract))
    assert row["params_gb"] * 1e9 == pytest.approx(kimi + 4 * count)
    assert row["gb"] * 1e9 > kimi + 4 * count  # the call's bytes hold the parameters, the tokenizer's among them


def test_margin_is_stated_against_the_h200():
    margin = [(128, 15.6, 15.3), (768, 91.0, 91.2), (928, 110.0, 160.6)]
    text = memory_plan.margin_text(margin)
    assert "-0.2% … +2.0% up to 768 sequences" in text and "-32% at 928" in text and "--here" in text


def test_gpu_rows_plan_the_h200_jump_above_the_sizes_it_matched(monkeypatch):
    """Above H200_LINEAR_UP_TO sequences per device a GPU plan counts ``jump`` × the temporaries: the answer is the
    largest chunk whose corrected bytes fit, compiled directly here."""
    margin = [(128, 15.6, 15.3), (768, 91.0, 91.2), (928, 110.0, 160.6), (1008, 120.0, 174.5)]
    jump = memory_plan.gpu_jump(margin)
    assert jump == pytest.approx(160.6 / 110.0)
    assert "GPU rows therefore plan calls of more than 768 sequences per device with 1.46×" in (
        memory_plan.margin_text(margin))
    monkeypatch.setattr(memory_plan, "H200_LINEAR_UP_TO", 4)  # 2 clips × 2 variants verified, 3 variants jump
    mesh = sharding.make_mesh(data=1)
    sweeps = memory_plan.Sweeps("qwen2", TINY, 24, jnp.float32, 4)
    budget = sweeps.bytes(mesh, 2, 3) + 1  # 3 variants fit as compiled, not with the jump
    plain = memory_plan.plan(sweeps, mesh, 2, budget, upper=8)
    corrected = memory_plan.plan(sweeps, mesh, 2, budget, upper=8, jump=jump)
    assert plain.chunk >= 3
    assert corrected.chunk == 2 and corrected.bytes == sweeps.bytes(mesh, 2, 2)
    temps = sweeps.footprint(mesh, 2, 3).temporaries
    assert corrected.next_bytes == sweeps.bytes(mesh, 2, 3) + int(temps * (jump - 1)) > budget
