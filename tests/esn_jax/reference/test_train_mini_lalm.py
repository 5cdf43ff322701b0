"""Training the mini-LALM's projector: the tiny config end to end (command line and in process, bitwise equal),
its rows (questions from the pool, answers ending the turn), its evaluation against the study's own prediction path,
and the shipped projector on the held-out voices."""

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
from esn_jax.reference import mini_lalm, train_mini_lalm, wordings
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
    assert saved["question"] == wordings.fill(wordings.ASKED, FOUR)  # the study's "asked" prompt
    assert saved["wordings"] == wordings.describe() and saved["curve"][-1]["step"] == 4
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


def test_training_rows_end_the_turn_and_answer_as_asked():
    """What the loss teaches: the row's question after the audio, the answer's tokens but the last teacher-forced,
    and an answer (the word, or a sentence holding it) that ends with the chat's end-of-turn token."""
    tokenizer = train_mini_lalm.build_tokenizer()
    sound = tokenizer.convert_tokens_to_ids(mini_lalm.SOUND)
    end = tokenizer.convert_tokens_to_ids(train_mini_lalm.END_OF_TURN)
    rng = np.random.default_rng(0)
    drawn = [wordings.draw(rng, FOUR, y) for y in (2, 3, 1, 0)]
    cuts = [train_mini_lalm.Prompt(tokenizer, q, mini_lalm.SYSTEM, sound) for q, _ in drawn]
    answers = [tokenizer.encode(a, add_special_tokens=False) + [end] for _, a in drawn]
    counts = np.array([3, 1, 2, 3])
    width = 3 + max(len(c.suffix) + len(a) - 1 for c, a in zip(cuts, answers, strict=True))
    rows, mask = train_mini_lalm.rest_rows(counts, [c.suffix for c in cuts], [a[:-1] for a in answers], width,
                                           sound, tokenizer.pad_token_id)
    targets, target_mask = train_mini_lalm.right_aligned(answers, max(map(len, answers)))
    for i, ((question, answer), cut) in enumerate(zip(drawn, cuts, strict=True)):
        text = mini_lalm.prompt({"question": question}, int(counts[i])) + answer + train_mini_lalm.END_OF_TURN
        # the rest row and its last target complete the prompt (the answer's tokens as the model writes them)
        assert tokenizer.decode(cut.prefix + rows[i][mask[i] == 1].tolist() + [end]) == text
        assert targets[i][target_mask[i] == 1].tolist() == answers[i] and answers[i][-1] == end
        assert tokenizer.decode(answers[i][:-1]).strip() == answer
    with pytest.raises(ValueError, match="does not fit"):
        train_mini_lalm.rest_rows(counts, [c.suffix for c in cuts], [a[:-1] for a in answers], width - 1, sound, 0)


def test_shipped_projector_on_held_out_voices(tmp_path, report):
    """The study's prediction rule on the speaker-disjoint test split of the corpus it was trained on."""
    meta = json.loads((mini_lalm.DEFAULT_DIR / mini_lalm.META).read_text())
    assert {p.name for p in mini_lalm.DEFAULT_DIR.iterdir()} >= FILES
    assert sum(p.stat().st_size for p in mini_lalm.DEFAULT_DIR.iterdir()) < 8 * 2**20
    assert meta["dataset"] == "synthetic_prosody/large" and meta["question"] == wordings.fill(wordings.ASKED, FOUR)
    data_dir = str(tmp_path / "tfds")
    BUILDERS["synthetic_prosody"](data_dir=data_dir, config="large").download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    accuracy, n = study_accuracy(mini_lalm.DEFAULT_DIR, data_dir, "large", "test")
    report(f"mini-LALM (shipped projector): test accuracy {accuracy:.3f} on {n} held-out clips "
           f"(reference.json: {meta['test_accuracy']:.3f}; chance 0.25)")
    assert n == meta["test_items"]
    # Training scored rest rows after a cached prefix at XLA's default matmul precision, this path whole prompts at
    # "highest" (tests/conftest.py): near-ties may flip a few of the 720 clips (1 and 2 seen).
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=4 / n)
    assert accuracy > 0.8  # fixed before the model was trained; the target (0.9) is reported, README
