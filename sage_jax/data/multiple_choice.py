"""Turn a numeric problem into an AQUA-RAT-style multiple-choice item with plausible wrong options.

Wrong options are the mistakes a solver makes: an intermediate result taken for the final one (the last number of
an earlier step), an off-by-one or off-by-ten slip, a dropped or extra digit, a wrong sign. Candidates are tried in
that order, so items built from multi-step rationales lead with the most tempting distractors.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from sage_jax.data.schema import Example
from sage_jax.layout import LETTERS

_NUMBER = re.compile(r"-?\d+")


def _wrong_candidates(answer: int, steps: tuple[str, ...]) -> list[int]:
    intermediate = [int(found[-1]) for step in steps[:-1] if (found := _NUMBER.findall(step))]
    slips = [answer + 1, answer - 1, answer + 10, answer - 10, answer * 10, answer // 10,
             int(str(abs(answer))[::-1]) * (1 if answer >= 0 else -1), -answer, answer + 2, answer - 2]
    return intermediate[::-1] + slips + [answer + d for d in range(3, 100)]


def to_multiple_choice(example: Example, rng: np.random.Generator, n_options: int = 5) -> Example:
    """A copy of `example` with `n_options` options (one correct) and the answer replaced by its letter.

    The question, rationale steps and dependencies are unchanged (options are rendered after the question, so
    dependency offsets stay valid).

    Raises:
      ValueError: the example already has options, or its answer is not an integer.
    """
    if example.options:
        raise ValueError(f"to_multiple_choice: example from {example.source!r} already has options")
    if not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"to_multiple_choice: n_options={n_options} must be in [2, {len(LETTERS)}]")
    if not _NUMBER.fullmatch(example.answer.strip()):
        raise ValueError(f"to_multiple_choice: answer {example.answer!r} of {example.source!r} is not an integer")
    answer = int(example.answer)
    wrong: list[int] = []
    for candidate in _wrong_candidates(answer, example.steps):
        if candidate != answer and candidate not in wrong:
            wrong.append(candidate)
        if len(wrong) == n_options - 1:
            break
    values = [answer] + wrong
    order = rng.permutation(n_options)
    options = tuple(str(values[i]) for i in order)
    letter = LETTERS[int(np.flatnonzero(order == 0)[0])]
    return dataclasses.replace(example, options=options, answer=letter, source=example.source + "/mc",
                               metadata={**example.metadata, "answer_value": example.answer})
