"""The steering evaluation, judged as control rather than breakage (beyond the paper's constrained ranking): the
model's own greedy answers under every gain on the ESNs and on their random controls, DiffMean steering vectors and a
prompting baseline; what each gain costs the language model on plain text; α chosen on held-out items; random
controls compared at matched cost.

- :mod:`~experiments.study.steering.score`: the score of one answer and every rule (fixed before any result);
- :mod:`~experiments.study.steering.stages`: the model-facing stages (answers, frame losses, plain-text damage);
- :mod:`~experiments.study.steering.analysis`: the numbers of results.json's ``steering_free``, and grid cells.
"""

from experiments.study.steering import analysis, score, stages
from experiments.study.steering.analysis import analyze, cell, prepare
from experiments.study.steering.stages import run_stage, stage_agnostic_damage

__all__ = ["analysis", "analyze", "cell", "prepare", "run_stage", "score", "stage_agnostic_damage", "stages"]
