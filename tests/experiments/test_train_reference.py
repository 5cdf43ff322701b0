"""The reference model: training end to end on the tiny config (deterministic, atomic output) and the
shipped checkpoint's accuracy on the held-out voices of ``synthetic_prosody/small``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import esn_jax
from configs.reference import get_config
from esn_jax import reference
from esn_jax.data import BUILDERS, FOUR, pipeline
from esn_jax.reference import train as train_reference
from ports import prompts

ROOT = Path(__file__).resolve().parents[2]
FILES = {"port.json", "params", "tokenizer.json", "tokenizer_config.json", "reference.json"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config trained in this process (which builds the corpus) and by the command line."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    here = train_reference.train(get_config("tiny"), data_dir, log=lambda _: None)
    out = tmp_path_factory.mktemp("cli") / "ref"
    # The JAX settings of this process (tests/conftest.py): they change XLA's float summation order.
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_NUM_CPU_DEVICES": "8"}
    run = subprocess.run([sys.executable, "-m", "experiments.train_reference", f"--out={out}",
                          "--config=configs/reference.py:tiny", f"--data_dir={data_dir}"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {out}" in run.stdout and "step 6/6: loss" in run.stdout
    return here, out


def test_tiny_training_is_deterministic(tiny_run):
    """Same seed, two processes: bitwise the same parameters and the same accuracies."""
    (config, params, tokenizer, meta), out = tiny_run
    module, params2, _, meta2 = reference.load_reference(out)
    assert module.config == config
    assert jax.tree.structure(params) == jax.tree.structure(params2)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert (meta["validation_accuracy"], meta["test_accuracy"]) == (meta2["validation_accuracy"],
                                                                    meta2["test_accuracy"])
    assert {p.name for p in out.iterdir()} == FILES
    # The tokenizer's special-token ids are the ones the model splices audio at.
    assert tokenizer.convert_tokens_to_ids(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]) == [
        config.audio_token_id, config.audio_start_token_id, config.audio_end_token_id]
    assert config.text.vocab_size == len(tokenizer)
    assert tokenizer.pad_token == "<|endoftext|>"


def test_tiny_output_directory(tiny_run, tmp_path):
    config, params, tokenizer, meta = tiny_run[0]
    out = train_reference.write(tmp_path / "ref", config, params, tokenizer, meta)
    assert {p.name for p in out.iterdir()} == FILES
    module, loaded, tok, saved = reference.load_reference(out)
    assert module.config == config
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    # The contract the study relies on (esn_jax.reference's docstring).
    assert saved["labels"] == list(FOUR)
    assert saved["label_token_ids"] == [tok(w, add_special_tokens=False)["input_ids"] for w in FOUR]
    assert all(len(ids) == 1 for ids in saved["label_token_ids"])
    assert isinstance(saved["question"], str) and saved["system"] == prompts.OMNI_VOICE_SYSTEM
    assert saved["dataset"] == "synthetic_prosody/tiny" and 0.0 <= saved["test_accuracy"] <= 1.0
    assert prompts.load_tokenizer(out).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(FileExistsError):
        train_reference.write(out, config, params, tokenizer, meta)


def test_a_failed_write_leaves_the_old_directory(tiny_run, tmp_path, monkeypatch):
    config, params, tokenizer, meta = tiny_run[0]
    out = train_reference.write(tmp_path / "ref", config, params, tokenizer, meta)
    before = (out / "reference.json").read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        train_reference.write(out, config, params, tokenizer, {**meta, "test_accuracy": -1.0}, overwrite=True)
    assert (out / "reference.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ref"]  # no temporary directory left behind


def test_shipped_reference_is_far_above_chance(tmp_path):
    """Scores the held-out (speaker-disjoint) test voices with the study's prediction rule."""
    module, params, tokenizer, meta = reference.load_reference()
    assert {p.name for p in reference.DEFAULT_DIR.iterdir()} >= FILES
    assert meta["dataset"] == "synthetic_prosody/small" and meta["labels"] == list(FOUR)
    size = sum(p.stat().st_size for p in reference.DEFAULT_DIR.rglob("*") if p.is_file())
    assert size < 8 * 2**20
    data_dir = str(tmp_path / "tfds")
    BUILDERS["synthetic_prosody"](data_dir=data_dir, config="small").download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    score = jax.jit(lambda p, b: esn_jax.score_labels(module, p, b, meta["label_token_ids"]))
    preds, labels = [], []
    for batch in pipeline.Batches(pipeline.read(meta["dataset"], "test", data_dir, view="four"),
                                  pipeline.PipelineConfig(batch_size=32, view="four")):
        logp = score(params, reference.model_batch(tokenizer, meta, batch.features))
        preds.append(np.asarray(logp.argmax(-1))[batch.valid])
        labels.append(batch.labels[batch.valid])
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    accuracy = float((preds == labels).mean())
    print(f"shipped reference: test accuracy {accuracy:.3f} on {len(labels)} clips; per class "
          f"{[round(float((preds[labels == k] == k).mean()), 2) for k in range(4)]}")
    assert len(labels) == meta["test_items"]
    assert accuracy >= 0.6
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=0.02)


def test_reference_config_variants():
    assert get_config()["dataset"] == "synthetic_prosody/small"
    with pytest.raises(ValueError, match="unknown config variant"):
        get_config("huge")
    assert json.dumps(get_config("tiny").to_dict())  # reference.json stores it
