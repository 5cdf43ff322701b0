"""The mini-LALM's training questions (:mod:`esn_jax.reference.wordings`): the pool is diverse and never holds the
wordings kept for evaluation."""

import re

import numpy as np

from configs.study import PROMPTS
from esn_jax.data import FOUR
from esn_jax.reference import wordings


def words(template: str) -> set[tuple[str, ...]]:
    """The template's word trigrams, without the label list."""
    tokens = re.findall(r"[a-z']+", template.replace("{labels}", " ").lower())
    return set(zip(tokens, tokens[1:], tokens[2:], strict=False))


def test_the_pool_holds_no_held_out_or_study_wording():
    kept_out = [t for t, _ in filter(None, PROMPTS.values())] + list(wordings.HELD_OUT)
    assert len(kept_out) == 2 + len(wordings.HELD_OUT) >= 6
    for wording in wordings.POOL:
        for other in kept_out:
            assert wording.template.lower() != other.lower()
            # not a near copy either: at most two word trigrams in common (e.g. "the speaker is")
            shared = words(wording.template) & words(other)
            assert len(shared) <= 2, (wording.template, other, shared)
    rng = np.random.default_rng(0)
    asked = {wordings.draw(rng, FOUR, int(rng.integers(4)))[0] for _ in range(4000)}
    for order in (FOUR, FOUR[::-1], FOUR[2:] + FOUR[:2]):
        for other in kept_out:
            assert wordings.fill(other, order) not in asked


def test_the_pool_is_diverse():
    pool = wordings.POOL
    assert len({w.template for w in pool}) == len(pool) >= 16
    assert all(w.template.count("{labels}") == 1 for w in pool)
    assert sum(w.answer == wordings.SENTENCE for w in pool) >= 3
    assert sum("one word" in w.template.lower() or "one-word" in w.template.lower() for w in pool) >= 4
    assert sum("word" not in w.template.lower() and w.answer == wordings.WORD for w in pool) >= 3
    assert len({w.template.split()[0] for w in pool}) >= 10  # many openings, not one sentence reworded


def test_draws_vary_order_and_listing_and_answer_as_asked():
    rng = np.random.default_rng(1)
    drawn = [(wordings.draw(rng, FOUR, y), y) for y in rng.integers(4, size=3000)]
    questions = {q for (q, _), _ in drawn}
    assert len(questions) > 500
    assert any(" / " in q for q in questions) and any(" or " in q for q in questions)
    assert wordings.fill(wordings.ASKED, FOUR) in questions  # the study's asked prompt itself
    for (question, answer), y in drawn:
        sentence = any(question.startswith(w.template.split("{")[0]) for w in wordings.POOL
                       if w.answer == wordings.SENTENCE)
        if sentence:
            assert answer != FOUR[y] and re.search(rf"\b{FOUR[y]}\b", answer)
        else:
            assert answer == FOUR[y]
    again = np.random.default_rng(1)  # deterministic for a seed
    ys = again.integers(4, size=3000)
    assert [wordings.draw(again, FOUR, y) for y in ys] == [d for d, _ in drawn]
