"""experiments.export: the folded weight edit behaves exactly as the intervention it replaces."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import ports
from esn_jax import interventions, reference
from esn_jax.reference import load_reference, mini_lalm
from ports import prompts
from ports.safetensors_np import SafetensorsFile


def export(tmp_path, checkpoint, text, alpha, rng):
    """Runs experiments.export on random masks of ``text``'s shape; returns the masks [S, K, 1+R, E, L, I]."""
    masks = rng.random((2, 1, 2, 4, text.num_hidden_layers, text.intermediate_size)) < 0.1
    np.savez(tmp_path / "masks.npz", masks=masks, selectors=np.array(["lap", "grad"]), ks=np.array([0.05]))
    run = subprocess.run([sys.executable, "-m", "experiments.export", f"--checkpoint={checkpoint}",
                          f"--masks={tmp_path / 'masks.npz'}", "--selector=grad", "--k=0.05", "--emotion=sad",
                          f"--alpha={alpha}", f"--out={tmp_path / 'out'}", f"--hf_out={tmp_path / 'hf'}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return masks


def test_export_of_an_ablated_reference_model(tmp_path):
    module, params, _, meta = load_reference()
    text = module.config.text
    rng = np.random.default_rng(0)
    masks = export(tmp_path, reference.DEFAULT_DIR, text, -1, rng)
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


def test_export_of_a_mini_lalm_writes_the_whole_edited_model_with_its_tokenizer(tmp_path):
    """The default --checkpoint, a mini-LALM directory: the edited language model is no longer the packaged
    one, so the whole model is written (ours and the Hugging Face layout), each with the tokenizer."""
    module, params, _, meta = mini_lalm.load()
    masks = export(tmp_path, mini_lalm.DEFAULT_DIR, module.config.text, 1.0, np.random.default_rng(0))  # gain 2
    mask = masks[1, 0, 0, meta["labels"].index("sad")]
    edited_module, edited = ports.load(tmp_path / "out")
    assert edited_module.config == module.config
    down = params["language_model"]["model"]["layers"]["mlp"]["down_proj"]["kernel"]
    want = np.asarray(down) * np.where(mask, 2.0, 1.0)[:, :, None]
    np.testing.assert_array_equal(edited["language_model"]["model"]["layers"]["mlp"]["down_proj"]["kernel"], want)
    assert json.loads((tmp_path / "out" / "reference.json").read_text()) == meta
    hf = SafetensorsFile(tmp_path / "hf" / "model.safetensors")
    np.testing.assert_array_equal(hf.read("language_model.model.layers.4.mlp.down_proj.weight"), want[4].T)
    for out in ("out", "hf"):
        assert prompts.load_tokenizer(tmp_path / out)(mini_lalm.SOUND).input_ids == [module.config.audio_token_id]
