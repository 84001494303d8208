"""Held-out procedural sets by difficulty: the asked step counts, and how much of each set training saw."""

from __future__ import annotations

from sage_jax.data import ChainSumKnobs
from sage_jax.evaluate import procedural_by_difficulty


def test_held_out_sets_have_the_asked_step_counts_and_report_what_training_saw():
    held = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 3), 6, seed=5,
                                    training_questions={"never=?"})
    assert [len(ex.steps) for ex in held.examples] == [1] * 6 + [3] * 6
    assert held.seen == {1: 0.0, 3: 0.0}
    all_seen = procedural_by_difficulty(ChainSumKnobs(), (2,), 4, seed=5,
                                        training_questions={ex.question for ex in held.examples}
                                        | {ex.question for ex in procedural_by_difficulty(
                                            ChainSumKnobs(), (2,), 4, seed=5).examples})
    assert all_seen.seen == {2: 1.0}
