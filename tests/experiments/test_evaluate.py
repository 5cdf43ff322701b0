"""experiments.evaluate on a tiny random Qwen2.5-Omni thinker (tests/experiments/tiny_reference.py) and the tiny
synthetic corpus: the wordings it asks, its constrained predictions and metrics against a direct teacher-forced
computation, its free answers against a plain greedy loop of full forward passes, and the command line's JSON."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.study import PROMPTS, get_config
from esn_jax.data import BUILDERS
from esn_jax.reference import wordings
from experiments.study import adapters, answers, benchmark
from tests.experiments import tiny_reference

ITEMS = 8  # the tiny corpus's test split: one voice, two sentences, four profiles


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    ref = tiny_reference.build(root / "ref", seed=2)
    data_dir = root / "tfds"
    BUILDERS["synthetic_prosody"](data_dir=str(data_dir), config="tiny").download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    cfg = get_config(f"local,checkpoint={ref},data_dir={data_dir},dataset_config=tiny,buckets=4")
    return cfg, adapters.load_model(cfg)


def study_batches(model, cfg, question, max_items=0):
    items = adapters.read_items(cfg, model, "synthetic_prosody/tiny", "test", max_items, cfg.seed)
    return list(adapters.batches(adapters.dataclasses.replace(model, question=question), items, cfg))


def direct_predictions(model, batch) -> np.ndarray:
    """argmax of log p(label | prompt), each label's tokens appended to the prompt and read by a full forward."""
    inputs = adapters.model_inputs(batch)
    mask = inputs.pop("attention_mask")
    apply = functools.partial(model.module.apply, {"params": model.params})
    prompt = apply(**inputs, method="embed_inputs")
    t = mask.shape[1]
    logp = []
    for label in model.label_token_ids:
        ids = np.tile(np.asarray(label, np.int32), (mask.shape[0], 1))
        logits = apply(inputs_embeds=jnp.concatenate([prompt, apply(ids, method="embed_answer")], 1),
                       attention_mask=np.concatenate([mask, np.ones_like(ids)], 1))
        out = jax.nn.log_softmax(logits[:, t - 1:t - 1 + len(label)], -1)
        logp.append(np.take_along_axis(np.asarray(out), ids[:, :, None], -1)[..., 0].sum(-1))
    return np.stack(logp, -1).argmax(-1)


def greedy_texts(model, batch, n: int) -> list[str]:
    """Each row's greedy answer by full forward passes (no cache), cut after its first stop token."""
    inputs = adapters.model_inputs(batch)
    mask = inputs.pop("attention_mask")
    apply = functools.partial(model.module.apply, {"params": model.params})
    prompt = apply(**inputs, method="embed_inputs")
    b, t = mask.shape
    mask = np.concatenate([mask, np.ones((b, n), mask.dtype)], 1)
    forward = jax.jit(lambda ids: apply(inputs_embeds=jnp.concatenate([prompt, apply(ids, method="embed_answer")], 1),
                                        attention_mask=mask))
    ends = {model.tokenizer.convert_tokens_to_ids(tok) for tok in ("<|im_end|>", "<|endoftext|>")}
    answer = np.zeros((b, n), np.int32)
    for k in range(n):
        answer[:, k] = np.asarray(forward(answer)[:, t - 1 + k]).argmax(-1)
    texts = []
    for row in answer:
        stop = next((k for k, tok in enumerate(row) if tok in ends), n - 1)
        texts.append(model.tokenizer.decode(row[:stop + 1].tolist(), skip_special_tokens=True).strip())
    return texts


def test_scores_every_wording_as_a_direct_computation(setup):
    cfg, model = setup
    result = benchmark.evaluate(cfg, held_out=True)
    expected = [*PROMPTS, *(f"held_out_{i}" for i in range(1, len(wordings.HELD_OUT) + 1))]
    assert list(result["wordings"]) == expected and result["dataset"] == "synthetic_prosody/tiny"
    questions = adapters.questions(model, tuple(PROMPTS)) + wordings.held_out_questions(model.labels)
    for (name, r), question in zip(result["wordings"].items(), questions, strict=True):
        assert r["question"] == question
        labels, preds = [], []
        for batch in study_batches(model, cfg, question):
            preds.append(direct_predictions(model, batch)[batch["valid"]])
            labels.append(batch["labels"][batch["valid"]])
        labels, preds = np.concatenate(labels), np.concatenate(preds)
        recalls = [np.mean(preds[labels == k] == k) for k in range(4)]
        assert r["items"] == ITEMS and r["unparsed"] == 0.0, name
        assert r["accuracy"] == pytest.approx(np.mean(preds == labels)), name
        assert r["uar"] == pytest.approx(np.mean(recalls)), name
        assert 0.0 <= r["macro_f1"] <= 1.0


def test_free_answers_are_parsed_as_a_greedy_loop_reads_them(setup):
    cfg, model = setup
    question = "Which emotion?"
    result = benchmark.evaluate(cfg, [question], answer="generate", max_items=4)
    r = result["wordings"]["q1"]
    texts, labels = [], []
    for batch in study_batches(model, cfg, question, max_items=4):
        valid = batch["valid"]
        texts += [t for t, v in zip(greedy_texts(model, batch, cfg.answer_tokens), valid, strict=True) if v]
        labels.append(batch["labels"][valid])
    labels = np.concatenate(labels)
    parsed = np.array([answers.parse(t, model.labels) for t in texts])
    assert any(texts)  # else the comparison below could not fail
    assert r["items"] == 4 and result["answer"] == "generate"
    assert r["unparsed"] == pytest.approx(np.mean(parsed == -1))
    assert r["accuracy"] == pytest.approx(np.mean(parsed == labels))


def test_the_command_line_writes_json(setup, tmp_path):
    cfg, _ = setup
    out = tmp_path / "eval.json"
    arg = f"local,checkpoint={cfg.checkpoint},data_dir={cfg.data_dir},dataset_config=tiny,buckets=4"
    run = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--config=configs/study.py:{arg}",
                          "--question=Which emotion?", "--question=emotion?", "--max_items=4", f"--out={out}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["wordings"]) == ["q1", "q2"]
    for r in result["wordings"].values():
        assert {"accuracy", "uar", "macro_f1", "unparsed"} <= set(r) and r["items"] == 4
    assert "| q1 | " in run.stdout and f"wrote {out}" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--config=configs/study.py:{arg}",
                          "--answer=guess"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--answer" in bad.stderr
