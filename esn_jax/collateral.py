"""Collateral damage: what an intervention costs, beyond the labels it moves (beyond the paper).

A neuron set is emotion-specific in a useful sense when silencing it hurts emotion recognition but leaves
the language model's ordinary text prediction alone. :func:`text_loss` measures the second half: the mean
next-token negative log-likelihood of text rows under each of V stacked interventions, vmapped and chunked
as :func:`esn_jax.sweep.score_variants` is. :data:`PLAIN_TEXT` is the fixed set of prompts the study
scores: short everyday English (facts, instructions, small dialogue), no audio.

Two more costs are read at the answer position of the study's own prompts, any port:

- drift, :func:`answer_drift`: KL(clean ‖ intervened) of the whole next-token distribution there, i.e. how far an
  intervention moves everything the model would say next, not only the labels (computed inside the sweep's program,
  ``score_variants(..., drift=True)``);
- label mass, :func:`label_mass`: the total probability the E labels keep (from the label log-probs the sweep
  returns), i.e. whether the model still answers with a label at all.

:func:`kl_divergence` is the KL of any two log-distributions, in numpy.

Axes: V = variants, B = rows, T = tokens, E = labels, L = layers, I = neurons.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from esn_jax import sweep
from ports.sites import Interventions

PLAIN_TEXT = (
    "The train to the coast leaves at half past nine every morning.",
    "Water boils at a lower temperature on top of a high mountain.",
    "Please close the window before you leave the office tonight.",
    "Can you pass me the salt? Sure, here you go.",
    "Most birds build their nests in the spring.",
    "Add two cups of flour and stir until the dough is smooth.",
    "The library is open from eight in the morning until six in the evening.",
    "Where did you park the car? Next to the bakery on the corner.",
    "A week has seven days and a year has twelve months.",
    "Turn left at the second traffic light and keep going straight.",
    "The meeting was moved to Thursday because the room was booked.",
    "Plants need light, water and air to grow.",
    "Do you want tea or coffee? Tea, please, with a little milk.",
    "Write your name at the top of the first page.",
    "The river runs through the middle of the old town.",
    "She bought three apples, a loaf of bread and some cheese.",
    "Remember to charge your phone before the trip.",
    "The moon goes around the earth about once a month.",
    "How long does the film last? A little over two hours.",
    "He painted the fence white and the door dark green.",
)
MAX_TOKENS = 32  # per prompt: room to spare (SmolLM2's tokenizer needs at most 16 for any of the above)


def text_loss(module, params, input_ids, attention_mask, interventions: Interventions,
              chunk_size: int | None = None) -> jnp.ndarray:
    """Mean next-token negative log-likelihood of every row under each of V interventions: [V, B] (nats/token).

    input_ids, attention_mask [B, T]: text rows padded on either side (1 = token); every pair of adjacent
    real tokens is scored, so each row needs at least two. Any port works: the text goes in as the port feeds
    back text it writes (``embed_answer``; Kimi-Audio: the text stream over audio-stream blanks), no audio.
    interventions: edits with a leading variant axis, e.g. ``interventions.ablate(masks [V, L, I])``.
    chunk_size: variants per vmapped step (default all V). Memory: ``chunk_size`` × B × T × vocab logits.
    """
    mask = sweep.local_rows(attention_mask)
    if (mask.sum(1) < 2).any():
        raise ValueError(f"every row needs at least two tokens to predict one; tokens per row: {mask.sum(1)}")
    chunks, v = sweep.chunk_variants(params, interventions, np.shape(attention_mask), chunk_size)
    return _loss(module, params, jnp.asarray(input_ids), jnp.asarray(attention_mask), chunks)[:v]


@functools.partial(jax.jit, static_argnames="module")
def _loss(module, params, input_ids, attention_mask, chunks):
    b, t = input_ids.shape
    # Position j predicts token j + 1; the pair counts when both are real tokens.
    pairs = (attention_mask[:, :-1] * attention_mask[:, 1:]).astype(jnp.float32)
    targets = input_ids[:, 1:, None]
    positions = jnp.broadcast_to(jnp.arange(t - 1), (b, t - 1))
    embeds = module.apply({"params": params}, input_ids, method="embed_answer")

    def loss(edits):
        logits = module.apply({"params": params}, inputs_embeds=embeds, attention_mask=attention_mask,
                              interventions=edits, logits_positions=positions)
        # logsumexp − target logit rather than a full log-softmax: no second vocab-sized array.
        target = jnp.take_along_axis(logits, targets, -1)[..., 0]
        nll = jax.nn.logsumexp(logits.astype(jnp.float32), -1) - target.astype(jnp.float32)
        return (nll * pairs).sum(1) / pairs.sum(1)

    out = jax.lax.map(jax.vmap(loss), chunks)  # [V / chunk, chunk, B]
    return out.reshape(-1, b)


def answer_drift(module, params, batch, interventions: Interventions, label_token_ids,
                 chunk_size: int | None = None) -> jnp.ndarray:
    """KL(clean ‖ intervened) of the next-token distribution at every row's answer position under each of V
    interventions: a jnp array [V, B] (nats, float32).

    The arguments are :func:`esn_jax.sweep.score_variants`'; this is ``score_variants(..., drift=True)`` without its
    label log-probs (the same program: a caller that wants both calls that). The labels decide only the packed
    forward the KL is read from, not its value: the answer position's distribution is the prompt's.
    """
    _, kl = sweep.score_variants(module, params, batch, interventions, label_token_ids, chunk_size, drift=True)
    return kl


def label_mass(logp) -> np.ndarray:
    """The total probability on the E labels: label log-probs [..., E] (as :func:`esn_jax.score_variants` returns,
    e.g. [V, B, E]) -> [...] float64, ``exp(logsumexp(logp))``; −inf log-probs count 0. For multi-token labels each
    term is the probability of the whole label sequence."""
    logp = np.asarray(logp, np.float64)
    top = logp.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # all −inf: exp(−inf − 0) = 0
    return np.exp(top[..., 0]) * np.exp(logp - top).sum(-1)


def kl_divergence(p_logp, q_logp) -> np.ndarray:
    """KL(p ‖ q) = Σ p (log p − log q) over the last axis of two log-distributions [..., K] (broadcasting) ->
    [...] float64. Terms where p = 0 (log p = −inf) count 0; p > 0 where q = 0 gives inf."""
    p_logp, q_logp = np.broadcast_arrays(np.asarray(p_logp, np.float64), np.asarray(q_logp, np.float64))
    p = np.exp(p_logp)
    with np.errstate(invalid="ignore"):  # −inf − −inf where p = 0: masked out below
        terms = np.where(p > 0, p * (p_logp - q_logp), 0.0)
    return terms.sum(-1)
