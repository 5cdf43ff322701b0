"""The ESN study behind ``python -m experiments.run_study``: :mod:`.adapters` (models, prompts, items),
:mod:`.stages` (resumable stages), :mod:`.analysis` (results and verdicts), :mod:`.report`, :mod:`.run`."""
