"""experiments.export: the folded weight edit behaves exactly as the intervention it replaces."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import ports
from esn_jax import interventions
from esn_jax.reference import load_reference


def test_export_of_an_ablated_reference_model(tmp_path):
    module, params, _, meta = load_reference()
    text = module.config.text
    rng = np.random.default_rng(0)
    masks = rng.random((2, 1, 2, 4, text.num_hidden_layers, text.intermediate_size)) < 0.1  # [S, K, 1+R, E, L, I]
    np.savez(tmp_path / "masks.npz", masks=masks, selectors=np.array(["lap", "grad"]), ks=np.array([0.05]))
    run = subprocess.run([sys.executable, "-m", "experiments.export", f"--masks={tmp_path / 'masks.npz'}",
                          "--selector=grad", "--k=0.05", "--emotion=sad", "--alpha=-1", f"--out={tmp_path / 'out'}",
                          f"--hf_out={tmp_path / 'hf'}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "hf" / "model.safetensors").exists()
    mask = masks[1, 0, 0, meta["labels"].index("sad")]
    edited_module, edited = ports.load(tmp_path / "out")
    ids = rng.integers(0, text.vocab_size - 1, (3, 9))
    want = module.apply({"params": params}, input_ids=ids, interventions=interventions.ablate(mask))
    got = edited_module.apply({"params": edited}, input_ids=ids)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - module.apply({"params": params}, input_ids=ids)).max() > 1e-4
    jax.tree.map(np.testing.assert_array_equal, ports.load(tmp_path / "out")[1]["audio_tower"], params["audio_tower"])


def test_fold_refuses_a_scale_of_the_wrong_shape():
    _, params, _, _ = load_reference()
    with pytest.raises(ValueError, match=r"\[L, I\] = \[2, 256\]"):
        ports.sites.fold(params, np.ones((3, 5)))
