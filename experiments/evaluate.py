r"""The clean emotion-recognition benchmark of a model, per wording of the question.

  python -m experiments.evaluate [--config=configs/study.py[:KEY=VALUE,...]] [--question=TEXT ...] [--held_out]
      [--answer=score|generate] [--max_items=N] [--out=PATH]

Any model the study loads (``--config``: the study's configuration, so by default the mini-LALM on the test split of
its own corpus), asked each wording in turn about the same items of ``eval_split`` (every item unless
``--max_items``: then a seeded, label-stratified subset). The wordings: ``--question`` (repeatable), or by default
the study's prompt variants (:data:`configs.study.PROMPTS`: ``asked``, ``which``, ``listen``); ``--held_out`` adds
the mini-LALM's held-out family (:data:`esn_jax.reference.wordings.HELD_OUT`, which its training never asks).

``--answer=score`` ranks the label words' log-probs (constrained, as the study's default); ``--answer=generate``
lets the model answer greedily (the study's ``answer_tokens``) and parses the answer with the study's parser
(:mod:`experiments.study.answers`): an answer that names no label is counted wrong and as *unparsed*.

Prints accuracy, UAR, macro-F1 and the unparsed rate per wording; ``--out`` writes them as JSON
(``{"wordings": {name: {"question", "accuracy", "uar", "macro_f1", "unparsed", "items"}}, ...}``), atomically.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

import esn_jax
from configs import study as study_config
from esn_jax import metrics, scoring
from esn_jax.reference import wordings
from experiments.study import adapters, answers, stages
from ports import prompts

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parents[1] / "configs" / "study.py"), "The study's configuration.")
_QUESTION = flags.DEFINE_multi_string("question", [], "A wording to ask (repeatable; default: the study's prompts).")
_HELD_OUT = flags.DEFINE_bool("held_out", False, "Also ask the mini-LALM's held-out wordings.")
_ANSWER = flags.DEFINE_enum("answer", "score", study_config.ANSWERS, "score: constrained; generate: free answers.")
_MAX_ITEMS = flags.DEFINE_integer("max_items", 0, "Items of the split (0: all; else a stratified subset).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON results.")


def wording_set(model: adapters.Model, asked: list[str], held_out: bool) -> dict[str, str]:
    """{name: question}: ``asked`` as ``q1``, ``q2``, ... or the study's prompts, then the held-out family."""
    if asked:
        out = {f"q{i}": q for i, q in enumerate(asked, 1)}
    else:
        names = tuple(study_config.PROMPTS)
        out = dict(zip(names, adapters.questions(model, names), strict=True))
    if held_out:
        out |= {f"held_out_{i}": q for i, q in enumerate(wordings.held_out_questions(model.labels), 1)}
    return out


def predict(model: adapters.Model, items, cfg, answer: str, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], predictions [N]) of ``items`` under ``model.question``; a free answer naming no label is
    :data:`esn_jax.metrics.NO_CLASS`."""
    stops = prompts.stop_token_ids(model.tokenizer) if answer == "generate" else ()
    labels, preds = [], []
    for batch in tqdm(adapters.batches(model, items, cfg), desc=desc, total=-(-len(items) // cfg.batch_size)):
        embedded = scoring.embed_jitted(model.module, model.params, adapters.model_inputs(batch))
        if answer == "generate":
            ids, lengths = esn_jax.generate(model.module, model.params, embedded, cfg.answer_tokens,
                                            stop_token_ids=stops, pad_token_id=model.tokenizer.pad_token_id)
            found = np.array([answers.parse(t, model.labels) for t in answers.decode(model.tokenizer, ids, lengths)])
        else:
            found = np.asarray(_score(model.module, model.params, embedded, model.label_token_ids).argmax(-1))
        labels.append(batch["labels"][batch["valid"]])
        preds.append(found[batch["valid"]])
    return np.concatenate(labels), np.concatenate(preds)


_score = jax.jit(esn_jax.score_labels, static_argnums=(0, 3))


def summary(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> dict[str, float]:
    return {"accuracy": metrics.accuracy(labels, preds), "uar": metrics.uar(labels, preds, num_labels),
            "macro_f1": metrics.macro_f1(labels, preds, num_labels),
            "unparsed": float(np.mean(preds == metrics.NO_CLASS)), "items": int(len(labels))}


def evaluate(cfg, questions: list[str] | None = None, held_out: bool = False, answer: str = "score",
             max_items: int = 0) -> dict:
    """The results :func:`main` prints and writes."""
    study_config.validate(cfg)
    model = adapters.load_model(cfg)
    dataset = adapters.ensure_dataset(cfg.dataset, cfg.dataset_config, cfg.data_dir, cfg.manual_dir, model.corpus)
    items = adapters.read_items(cfg, model, dataset, cfg.eval_split, max_items, cfg.seed)
    results = {}
    for name, question in wording_set(model, list(questions or ()), held_out).items():
        labels, preds = predict(dataclasses.replace(model, question=question), items, cfg, answer, name)
        results[name] = {"question": question, **summary(labels, preds, len(model.labels))}
    return {"model": cfg.checkpoint, "dataset": dataset, "split": cfg.eval_split, "answer": answer,
            "labels": list(model.labels), "wordings": results}


def table(result: dict) -> str:
    """The results as a markdown table, one row per wording."""
    lines = [f"{result['dataset']} {result['split']}, answer={result['answer']}", "",
             "| wording | accuracy | UAR | macro-F1 | unparsed | items | question |", "|---|---|---|---|---|---|---|"]
    for name, r in result["wordings"].items():
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['uar']:.3f} | {r['macro_f1']:.3f} | {r['unparsed']:.3f} "
                     f"| {r['items']} | {r['question']} |")
    return "\n".join(lines)


def main(argv):
    del argv
    result = evaluate(_CONFIG.value, _QUESTION.value, _HELD_OUT.value, _ANSWER.value, _MAX_ITEMS.value)
    print(table(result))
    if _OUT.value:
        stages.write_atomically(Path(_OUT.value), (json.dumps(result, indent=1) + "\n").encode())
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
