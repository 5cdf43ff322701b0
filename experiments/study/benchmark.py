"""The clean emotion-recognition benchmark of a model, per wording of the question (``python -m
experiments.evaluate`` is its command line).

Shapes: N items, E label words.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from tqdm import tqdm

import esn_jax
from configs import study as study_config
from esn_jax import metrics, scoring
from esn_jax.reference import wordings
from experiments.study import adapters, answers
from ports import prompts


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
