"""Held-out procedural problems by difficulty (the number of rationale steps).

Held-out items come from a source seeded apart from training. With one-digit terms a task's problem space is
small (a 2-term chained sum has 100 distinct questions, a 3-term one 1,000), so a training run of many
thousand examples sees most of it; "held out" then means an independent sample, not unseen questions.
`HeldOut.seen` says, per difficulty, which fraction of the evaluated questions also occurs among the
training items given, so an accuracy can be read as recall or as generalisation.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Optional, Sequence

from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource, VariableChainKnobs
from sage_jax.data.schema import Example


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Evaluation problems and how many of them training also contained.

    Attributes:
      examples: the problems, `per_difficulty` of each difficulty in order.
      seen: `{steps: fraction of that difficulty's questions among the training questions}` (None when no
        training questions were given).
    """

    examples: tuple[Example, ...]
    seen: Optional[dict[int, float]]


def knobs_with_steps(knobs: ChainSumKnobs | VariableChainKnobs, steps: int) -> ChainSumKnobs | VariableChainKnobs:
    """`knobs` with the number of rationale steps fixed to `steps` (other ranges kept)."""
    if steps < 1:
        raise ValueError(f"a procedural problem has at least one step, got steps={steps}")
    if isinstance(knobs, ChainSumKnobs):
        return dataclasses.replace(knobs, n_terms=(steps + 1, steps + 1), n_terms_weights=())
    if isinstance(knobs, VariableChainKnobs):
        return dataclasses.replace(knobs, n_steps=(steps, steps))
    raise TypeError(f"knobs must be ChainSumKnobs or VariableChainKnobs, got {type(knobs).__name__}")


def procedural_by_difficulty(knobs: ChainSumKnobs | VariableChainKnobs, steps: Sequence[int], per_difficulty: int,
                             seed: int, training_questions: Optional[Collection[str]] = None) -> HeldOut:
    """`per_difficulty` problems of each step count in `steps`, from sources seeded by `(seed, steps)`.

    Args:
      knobs: the task and its other difficulty ranges (e.g. the training knobs).
      steps: rationale step counts to evaluate.
      per_difficulty: problems per step count.
      seed: the held-out seed (choose one training never used).
      training_questions: the questions of the training items, to report `HeldOut.seen`.
    """
    examples, seen = [], {}
    for k in steps:
        source = ProceduralSource(knobs_with_steps(knobs, k), size=per_difficulty, seed=seed * 1000 + k)
        batch = [source[i] for i in range(per_difficulty)]
        examples.extend(batch)
        if training_questions is not None:
            seen[k] = sum(ex.question in training_questions for ex in batch) / per_difficulty
    return HeldOut(examples=tuple(examples), seen=seen if training_questions is not None else None)
