"""Training the mini-LALM's projector: the tiny config end to end (command line and in process, bitwise equal),
its evaluation against the study's own prediction path, and the shipped projector on the held-out voices."""

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
from configs.mini_lalm import get_config
from configs.study import get_config as study_config
from esn_jax.data import BUILDERS, FOUR
from esn_jax.reference import mini_lalm, train_mini_lalm
from experiments.study import adapters
from ports import prompts

ROOT = Path(__file__).resolve().parents[3]
FILES = {mini_lalm.PROJECTOR, mini_lalm.META, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config trained by the command line (which builds the corpus) and in this process."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    out = tmp_path_factory.mktemp("cli") / "mini"
    # The JAX settings of this process (tests/conftest.py): they change XLA's float summation order.
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_NUM_CPU_DEVICES": "8"}
    run = subprocess.run([sys.executable, "-m", "experiments.train_reference", f"--out={out}",
                          "--config=configs/mini_lalm.py:tiny", f"--data_dir={data_dir}"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {out}" in run.stdout and "step 4/4: loss" in run.stdout
    here = train_mini_lalm.train(get_config("tiny"), data_dir, log=lambda _: None)
    return here, out, data_dir


def study_accuracy(path, data_dir: str, dataset_config: str, split: str) -> tuple[float, int]:
    """Accuracy by the study's own path: full prompts (adapters), the encoder and esn_jax.score_labels."""
    cfg = study_config(f"checkpoint={path},data_dir={data_dir},dataset_config={dataset_config},max_eval_items=0")
    model = adapters.load_model(cfg)
    items = adapters.read_items(cfg, model, f"synthetic_prosody/{dataset_config}", split, 0, 0)
    score = jax.jit(lambda p, b: esn_jax.score_labels(model.module, p, b, model.label_token_ids))
    right = total = 0
    for batch in adapters.batches(model, items, cfg):
        preds = np.asarray(score(model.params, adapters.model_inputs(batch)).argmax(-1))
        right += int((preds == batch["labels"])[batch["valid"]].sum())
        total += int(batch["valid"].sum())
    return right / total, total


def test_tiny_training_is_deterministic_and_complete(tiny_run):
    (projector, tokenizer, meta), out, _ = tiny_run
    assert {p.name for p in out.iterdir()} == FILES
    _, params, tok, saved = mini_lalm.load(out)
    for a, b in zip(jax.tree.leaves(projector), jax.tree.leaves(params["multi_modal_projector"]), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert (saved["validation_accuracy"], saved["test_accuracy"]) == (meta["validation_accuracy"],
                                                                       meta["test_accuracy"])
    assert saved["labels"] == list(FOUR) and saved["system"] == mini_lalm.SYSTEM
    assert saved["label_token_ids"] == [tok.encode(w, add_special_tokens=False) for w in FOUR]
    assert saved["provenance"] == mini_lalm.provenance()
    assert tok.get_vocab() == tokenizer.get_vocab()


def test_training_evaluation_is_the_study_prediction(tiny_run):
    """Training scores rest rows after a cached prefix from cached audio tokens; the study runs whole prompts
    through the encoder. Both must predict the same labels."""
    (_, _, meta), out, data_dir = tiny_run
    accuracy, n = study_accuracy(out, data_dir, "tiny", "validation")
    assert n == meta["validation_items"] and accuracy == meta["validation_accuracy"]


def test_shipped_tokenizer_is_smollm2s_plus_sound():
    shipped = prompts.load_tokenizer(mini_lalm.DEFAULT_DIR)
    built = train_mini_lalm.build_tokenizer()
    assert shipped.get_vocab() == built.get_vocab()
    assert shipped.chat_template == built.chat_template
    assert shipped.convert_tokens_to_ids(mini_lalm.SOUND) == 49152
    text = mini_lalm.prompt({"question": "Which emotion?"}, 3)
    assert shipped.encode(text, add_special_tokens=False) == built.encode(text, add_special_tokens=False)


def test_shipped_projector_on_held_out_voices(tmp_path, report):
    """The study's prediction rule on the speaker-disjoint test split of synthetic_prosody/small."""
    meta = json.loads((mini_lalm.DEFAULT_DIR / mini_lalm.META).read_text())
    assert {p.name for p in mini_lalm.DEFAULT_DIR.iterdir()} >= FILES
    assert sum(p.stat().st_size for p in mini_lalm.DEFAULT_DIR.iterdir()) < 8 * 2**20
    data_dir = str(tmp_path / "tfds")
    BUILDERS["synthetic_prosody"](data_dir=data_dir, config="small").download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    accuracy, n = study_accuracy(mini_lalm.DEFAULT_DIR, data_dir, "small", "test")
    report(f"mini-LALM (shipped projector): test accuracy {accuracy:.3f} on {n} held-out clips "
           f"(reference.json: {meta['test_accuracy']:.3f}; chance 0.25)")
    assert n == meta["test_items"]
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=1.5 / n)  # a near-tie may flip one clip
    assert accuracy > 0.5
