"""`reasoning-gym` tasks as sources of `Example`s, each with the task's own answer scorer.

Mapping to the schema:
- `gsm_symbolic`: the rationale is the task's `answer_cot`, one step per non-empty line (its closing
  `#### answer` line is the answer, not a step).
- `chain_sum`: the task gives no rationale; its expression (`"4 - 1 - 7"`, `+` and `-` only) is evaluated left
  to right, one step per operation (`"4 - 1 = 3"`, `"3 - 7 = -4"`), with the same dependencies as the
  project's own `procedural.chain_sum` (running total and the term it adds).
- every other task (`basic_arithmetic`, `syllogism`, `propositional_logic`, ...): question and answer, no steps.

`GymSource.score(example, predicted)` calls the task's `score_answer` on the original gym entry (kept in
`Example.metadata["entry"]`), so evaluation uses the task's own notion of a correct answer.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Mapping

from sage_jax.data.schema import Example
from sage_jax.layout import QUESTION_PART, Span

_TERM = re.compile(r"([+-]) (\d+)")


def _chain_sum_steps(question: str, expression: str) -> tuple[tuple[str, ...], tuple[tuple[Span, ...], ...]]:
    offset = question.index(expression)
    first = re.match(r"\d+", expression)
    total = int(first.group())
    running = Span(QUESTION_PART, offset, offset + first.end())
    steps, deps = [], []
    for k, match in enumerate(_TERM.finditer(expression, first.end())):
        op, term = match.group(1), int(match.group(2))
        result = total + term if op == "+" else total - term
        steps.append(f"{total} {op} {term} = {result}")
        deps.append((running, Span(QUESTION_PART, offset + match.start(), offset + match.end())))
        running = Span(k, len(steps[-1]) - len(str(result)), len(steps[-1]))
        total = result
    return tuple(steps), tuple(deps)


class GymSource:
    """`size` examples of reasoning-gym task `task`; item `i` depends only on `(seed, i, config)`.

    Satisfies grain's `RandomAccessDataSource` protocol. `config` overrides the task's config fields
    (for example `{"min_terms": 2, "max_terms": 4}` for `chain_sum`).
    """

    def __init__(self, task: str, size: int, seed: int = 0, config: Mapping[str, Any] | None = None):
        self.task = task
        # Imported here: reasoning_gym loads every task generator (about 1 s), which importing the training
        # stack should not pay when no gym source is used.
        gym = importlib.import_module("reasoning_gym")
        self._dataset = gym.create_dataset(task, size=size, seed=seed, **dict(config or {}))

    @property
    def name(self) -> str:
        return f"gym/{self.task}"

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> Example:
        entry = self._dataset[int(index)]
        question, answer = entry["question"], str(entry["answer"])
        steps: tuple[str, ...] = ()
        deps = None
        if self.task == "gsm_symbolic":
            lines = (line.strip() for line in entry["metadata"]["answer_cot"].splitlines())
            steps = tuple(line for line in lines if line and not line.startswith("####"))
        elif self.task == "chain_sum":
            steps, deps = _chain_sum_steps(question, entry["metadata"]["expression"])
        return Example(question=question, steps=steps, answer=answer, dependencies=deps, source=self.name,
                       metadata={"entry": entry})

    def score(self, example: Example, predicted: str) -> float:
        """The task's own score in [0, 1] of `predicted` as the answer to `example` (an item of this source)."""
        return float(self._dataset.score_answer(predicted, example.metadata["entry"]))
