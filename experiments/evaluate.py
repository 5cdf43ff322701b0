r"""The clean emotion-recognition benchmark of a model, per wording (:mod:`experiments.study.benchmark`).

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

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from configs import study as study_config
from experiments.study import benchmark, stages

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parents[1] / "configs" / "study.py"), "The study's configuration.")
_QUESTION = flags.DEFINE_multi_string("question", [], "A wording to ask (repeatable; default: the study's prompts).")
_HELD_OUT = flags.DEFINE_bool("held_out", False, "Also ask the mini-LALM's held-out wordings.")
_ANSWER = flags.DEFINE_enum("answer", "score", study_config.ANSWERS, "score: constrained; generate: free answers.")
_MAX_ITEMS = flags.DEFINE_integer("max_items", 0, "Items of the split (0: all; else a stratified subset).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON results.")


def main(argv):
    del argv
    result = benchmark.evaluate(_CONFIG.value, _QUESTION.value, _HELD_OUT.value, _ANSWER.value, _MAX_ITEMS.value)
    print(benchmark.table(result))
    if _OUT.value:
        stages.write_atomically(Path(_OUT.value), (json.dumps(result, indent=1) + "\n").encode())
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
