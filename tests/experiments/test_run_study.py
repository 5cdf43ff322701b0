"""The main job on its local configuration: files, internal consistency, rerun on the same workdir."""

import json
import subprocess
import sys

import pytest

from configs.study import get_config
from experiments import run_study


def test_run_study_local(tmp_path):
    results = run_study.run(get_config("local"), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert results["conversion_round_trip_max_abs_diff"] == 0.0
    assert results["intervention_vs_weight_edit_max_abs_diff"] <= 1e-5
    assert results["kl_clean_to_ablated"] > 0
    assert len(results["mean_fire_rate_per_layer"]) == get_config("local").decoder.num_hidden_layers
    assert "| neurons ablated per layer" in (tmp_path / "report.md").read_text()
    # A second run reuses the checkpoints already in the workdir and reproduces every number.
    assert run_study.run(get_config("local"), tmp_path) == results


def test_command_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "experiments.run_study", f"--workdir={tmp_path}",
                          "--config=configs/study.py:local", "--mesh=data:1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"report: {tmp_path / 'report.md'}" in run.stdout


def test_unknown_config_variant():
    with pytest.raises(ValueError, match="unknown config variant 'huge'"):
        get_config("huge")


def test_sharded_run_matches(tmp_path):
    from ports import sharding

    single = run_study.run(get_config("local"), tmp_path / "one")
    sharded = run_study.run(get_config("local"), tmp_path / "mesh", sharding.make_mesh(data=2, model=2))
    assert sharded.keys() == single.keys()
    for key in ("kl_clean_to_ablated", "next_token_changed_fraction", "intervention_vs_weight_edit_max_abs_diff"):
        assert sharded[key] == pytest.approx(single[key], abs=1e-4), key
    assert sharded["mean_fire_rate_per_layer"] == single["mean_fire_rate_per_layer"]
