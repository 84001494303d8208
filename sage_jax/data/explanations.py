"""Explanations rendered from ground-truth step dependencies: the stage-3 targets of procedural tasks.

The text names, for every step, exactly the facts that step was computed from, in the one explanation grammar
(`sage_jax.layout.render_explanation`), so a model trained on it learns to state true dependencies, and its claims
can be checked against `Example.dependencies`.
"""

from __future__ import annotations

import dataclasses

from sage_jax.data.schema import Example
from sage_jax.layout import Claim, render_explanation


def explain_dependencies(example: Example) -> str:
    """`"Step 1 depends on '3' from the question, '+1' from the question. Step 2 depends on ..."`.

    Raises:
      ValueError: the example declares no dependencies.
    """
    if example.dependencies is None:
        raise ValueError(f"explain_dependencies: example from {example.source!r} declares no dependencies")
    return render_explanation([[Claim(example.span_text(s), s.part) for s in spans]
                               for spans in example.dependencies])


def with_explanation(example: Example) -> Example:
    """A copy of `example` whose explanation is `explain_dependencies(example)`."""
    return dataclasses.replace(example, explanation=explain_dependencies(example))
