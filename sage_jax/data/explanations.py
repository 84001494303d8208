"""Explanations rendered from ground-truth step dependencies: the stage-3 targets of procedural tasks.

The text names, for every step, exactly the facts that step was computed from, so a model trained on it learns to
state true dependencies, and its claims can be checked against `Example.dependencies`.
"""

from __future__ import annotations

import dataclasses

from sage_jax.data.schema import QUESTION_PART, Example


def explain_dependencies(example: Example) -> str:
    """`"Step 1 depends on '3' from the question, '+1' from the question. Step 2 depends on ..."`.

    Raises:
      ValueError: the example declares no dependencies.
    """
    if example.dependencies is None:
        raise ValueError(f"explain_dependencies: example from {example.source!r} declares no dependencies")
    lines = []
    for k, spans in enumerate(example.dependencies):
        used = [f"'{example.span_text(s)}' from "
                + ("the question" if s.part == QUESTION_PART else f"step {s.part + 1}") for s in spans]
        lines.append(f"Step {k + 1} depends on " + ", ".join(used) + ".")
    return " ".join(lines)


def with_explanation(example: Example) -> Example:
    """A copy of `example` whose explanation is `explain_dependencies(example)`."""
    return dataclasses.replace(example, explanation=explain_dependencies(example))
