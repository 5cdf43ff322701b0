"""The emotion-sensitive-neuron method: streamed statistics, selectors, interventions, sweeps, metrics.

Public API::

    stats, correct = esn_jax.update_stats(stats, module, params, batch, labels, label_token_ids)
    masks = esn_jax.select(stats, "lape", 0.01)                        # bool [E, L, I]
    logp = esn_jax.score_variants(module, params, batch, esn_jax.ablate(masks), label_token_ids)  # [E, B, N]
    ids, lengths = esn_jax.generate(module, params, batch, 16, esn_jax.gain(masks, 8.0))  # [E, B, 16], [E, B]

Modules: :mod:`esn_jax.scoring`, :mod:`esn_jax.stats`, :mod:`esn_jax.selectors`,
:mod:`esn_jax.interventions`, :mod:`esn_jax.sweep` (with :mod:`esn_jax.prefix`), :mod:`esn_jax.decoding`
(generation under interventions), :mod:`esn_jax.metrics`, and
beyond the paper :mod:`esn_jax.collateral` (an intervention's cost: next-token loss on plain text, drift of the
answer-position distribution, the probability left on the labels).
"""

from esn_jax import metrics
from esn_jax.collateral import answer_drift, kl_divergence, label_mass, text_loss
from esn_jax.decoding import generate
from esn_jax.interventions import ablate, add_vector, at_positions, gain, mean_ablate, mix, stack, two_pass, union
from esn_jax.scoring import score_labels
from esn_jax.selectors import METHODS, attribution, select
from esn_jax.stats import EmotionStats, StatsConfig, model_dims, position_mask
from esn_jax.stats import update as update_stats
from esn_jax.sweep import score_variants

__all__ = [
    "METHODS", "EmotionStats", "StatsConfig", "ablate", "add_vector", "answer_drift", "at_positions", "attribution",
    "gain", "generate", "kl_divergence", "label_mass", "mean_ablate", "metrics", "mix", "model_dims", "position_mask",
    "score_labels", "score_variants", "select", "stack", "text_loss", "two_pass", "union", "update_stats",
]
