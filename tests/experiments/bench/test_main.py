"""``python -m experiments.bench`` at ``--shape=tiny`` on the CPU, as a subprocess (absl flags are process-global:
tests/experiments/test_scripts.py): every comparison's sides run and agree, the ratios end the output, and the
headline table (--markdown) holds exactly what the same invocation printed."""

import datetime
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def bench(*args: str) -> list[str]:
    run = subprocess.run([sys.executable, "-m", "experiments.bench", "--shape=tiny", "--repeats=1", *args], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip().splitlines()


def one(lines: list[str], pattern: str) -> re.Match:
    found = [m for line in lines if (m := re.search(pattern, line))]
    assert len(found) == 1, (pattern, lines)
    return found[0]


def cells(table: str) -> list[list[str]]:
    """The table's rows below its header, as stripped cells."""
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    return [[c.strip() for c in row.strip().strip("|").split(" | ")] for row in rows]


def test_the_accelerator_comparisons_run_every_side_and_end_with_their_ratios(tmp_path):
    comparisons = "--comparisons=gemm,equal_work,study_af3,stats,attribution"
    started = datetime.datetime.now(datetime.UTC).date()
    lines = bench(comparisons, f"--markdown={tmp_path / 'headline.md'}")
    one(lines, r"^float32 matmul peak \(256³\): numpy [\d.]+ [GT]FLOP/s, jax [\d.]+ [GT]FLOP/s, torch [\d.]+ "
               r"[GT]FLOP/s; peak")
    one(lines, r"^equal work, tiny shape, float32, N=2 clips × V=4 masks × T=16 tokens")
    for side in (r"ours \(jit \+ vmap, chunk 8\)", "transformers \\+ hooks, mask by mask",
                 r"transformers \+ hooks, 4 masks per call \(per-row scales\)"):
        one(lines, rf"^  {side}: [\d.]+ s, [\d.]+ [GT]FLOP/s, [\d.]+ of the GEMM peak$")
    agree = one(lines, r"prediction agreement: ([\d.]+) mask by mask \(max \|dlogp\| (\S+)\), ([\d.]+) batched "
                       r"\(max \|dlogp\| (\S+)\)")
    assert float(agree[1]) == float(agree[3]) == 1.0
    assert float(agree[2]) < 1e-4 and float(agree[4]) < 1e-4
    one(lines, r"^study stage, Audio Flamingo 3 \(tiny shape, random weights\), float32, 2 clips of one 20-frame "
               r"window × 4 ablation masks, 11 tokens per clip:")
    for side in ("ours", "transformers \\+ hooks, full model per mask", "transformers \\+ hooks, encoder once"):
        one(lines, rf"^  {side}.*: [\d.]+ s$")
    agree = one(lines, r"prediction agreement: ([\d.]+) full model \(max \|dlogp\| (\S+)\), ([\d.]+) encoder once "
                       r"\(max \|dlogp\| (\S+)\)")
    assert float(agree[1]) == float(agree[3]) == 1.0
    assert float(agree[2]) < 1e-4 and float(agree[4]) < 1e-4
    one(lines, r"^statistics, 2 × 16 tokens \(esn_jax.update_stats, one step\): [\d.]+ s \([\d.]+k tokens/s\), "
               r"32 tokens pooled$")
    one(lines, r"^gradient attribution, 2 × 16 tokens \(esn_jax.attribution, one call\): [\d.]+ s; 2 items, "
               r"gradients finite$")
    names = ["ratio_equal_work", "peak_fraction", "ratio_equal_work_batched", "ratio_study_af3",
             "ratio_study_af3_encoder_once"]
    tail = [re.fullmatch(r"(\w+)=(\d+\.\d{3})", line) for line in lines[-len(names):]]
    assert all(tail), lines[-len(names):]
    assert [m[1] for m in tail] == names
    assert all(float(m[2]) > 0 for m in tail)
    assert [p.name for p in tmp_path.iterdir()] == ["headline.md"]  # written whole: no temporary left
    check_table((tmp_path / "headline.md").read_text(), lines, comparisons, started)


def test_peak_is_the_gemm_comparison():
    lines = bench("--comparisons=peak", "--dtype=bfloat16")
    one(lines, r"^bfloat16 matmul peak \(256³\): jax [\d.]+ [GT]FLOP/s, torch [\d.]+ [GT]FLOP/s; peak")
    assert not any("=" in line for line in lines[1:])  # no ratio without a comparison that has one


def check_table(table: str, lines: list[str], comparisons: str, started: datetime.date):
    """Every cell of the table is a value the invocation printed: the ours/theirs cells verbatim in a printed line,
    each ratio cell a printed ratio line; every printed ratio is in the table; the facts name this run."""
    printed = "\n".join(lines)
    ratio_lines = {line for line in lines if re.fullmatch(r"\w+=\d+\.\d{3}", line)}
    rows = cells(table)
    assert [row[0].split(",")[0] for row in rows] == ["equal work"] * 2 + ["equal work against the GEMM peak"] + [
        "study stage"] * 2 + ["statistics", "gradient attribution"]
    assert [row[2].split(":")[0] for row in rows] == ["naive", "careful", "none", "naive", "careful",
                                                      "none (ours only)", "none (ours only)"]
    for row in rows:
        assert len(row) == 5, row
        for cell in row[1], row[3]:
            assert cell in printed if cell else row[2].startswith("none"), cell
        assert row[4] == "" or row[4].strip("`") in ratio_lines, row
    assert {row[4].strip("`") for row in rows if row[4]} == ratio_lines
    facts = table.split("\n| comparison")[0]
    assert f"GEMM peaks of the same run: {one(lines, r'^float32 matmul peak').string}" in facts
    dates = {started, datetime.datetime.now(datetime.UTC).date()}  # the run may cross midnight
    assert any(facts.startswith(f"### {d.isoformat()}, commit ") for d in dates), facts
    assert f"--shape=tiny --repeats=1 {comparisons}" in facts and "jax " in facts and "torch " in facts
