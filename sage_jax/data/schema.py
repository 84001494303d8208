"""The one example schema every source maps to, and its encoding in a `sage_jax.layout.Layout`.

An `Example` is text plus structure: a question, optional multiple-choice options, rationale steps, an answer,
an optional explanation, and (where the source knows them) step-level dependencies. A dependency is a `Span`
of characters in the question or in an earlier step; the layout turns spans into token indices
(`sage_jax.layout.EncodedExample.step_deps`), so that a source never needs to know the tokenizer.

Multiple-choice examples store options without their letter (`"21"`, not `"A)21"`) and the answer as the
letter (`"C"`); the letters are added when the prompt is rendered (`render_prompt`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from sage_jax.layout import LETTERS, QUESTION_PART, SAGE, Codec, EncodedExample, Layout, Span


class SchemaError(ValueError):
    """An `Example` that breaks the schema; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One reasoning example, whatever its source.

    Attributes:
      question: the problem text (without options).
      steps: rationale steps, in order; may be empty.
      answer: the final answer text (the option letter for multiple-choice items).
      options: multiple-choice option texts without letters; empty for open questions.
      explanation: a natural-language explanation (curriculum stage 3), or None.
      dependencies: None when unknown; else one tuple of `Span`s per step: the question characters and
        earlier-step characters that step truly depends on.
      source: name of the source, e.g. "gsm8k" or "procedural/chain_sum".
      metadata: source-specific extras (calculator annotations, difficulty knobs, the gym entry).
    """

    question: str
    steps: tuple[str, ...]
    answer: str
    options: tuple[str, ...] = ()
    explanation: Optional[str] = None
    dependencies: Optional[tuple[tuple[Span, ...], ...]] = None
    source: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "options", tuple(self.options))
        for field in ("question", "answer", "source"):
            if not isinstance(getattr(self, field), str):
                raise SchemaError(f"Example.{field} must be a str, got {type(getattr(self, field)).__name__}")
        for field in ("steps", "options"):
            for i, text in enumerate(getattr(self, field)):
                if not isinstance(text, str):
                    raise SchemaError(f"Example.{field}[{i}] must be a str, got {type(text).__name__}")
        if self.explanation is not None and not isinstance(self.explanation, str):
            raise SchemaError(f"Example.explanation must be a str or None, got {type(self.explanation).__name__}")
        if len(self.options) > len(LETTERS):
            raise SchemaError(f"Example.options has {len(self.options)} options; at most {len(LETTERS)}")
        if self.options and self.answer not in LETTERS[: len(self.options)]:
            raise SchemaError(f"Example.answer={self.answer!r} must be an option letter in "
                              f"{LETTERS[: len(self.options)]!r} for a multiple-choice example")
        if self.dependencies is not None:
            self._check_dependencies()

    def _check_dependencies(self) -> None:
        deps = tuple(tuple(step) for step in self.dependencies)
        object.__setattr__(self, "dependencies", deps)
        if len(deps) != len(self.steps):
            raise SchemaError(f"Example.dependencies has {len(deps)} entries for {len(self.steps)} steps")
        for k, spans in enumerate(deps):
            for j, span in enumerate(spans):
                where = f"Example.dependencies[{k}][{j}]"
                if not isinstance(span, Span):
                    raise SchemaError(f"{where} must be a Span, got {type(span).__name__}")
                if not QUESTION_PART <= span.part < k:
                    raise SchemaError(f"{where}.part={span.part}: step {k} may depend only on the question "
                                      f"({QUESTION_PART}) or an earlier step (0..{k - 1})")
                text = self.question if span.part == QUESTION_PART else self.steps[span.part]
                if not 0 <= span.start < span.end <= len(text):
                    raise SchemaError(f"{where}=[{span.start}, {span.end}) is not a non-empty range of "
                                      f"part {span.part} (length {len(text)})")

    def span_text(self, span: Span) -> str:
        """The characters a dependency span points at."""
        text = self.question if span.part == QUESTION_PART else self.steps[span.part]
        return text[span.start:span.end]


def encode_example(example: Example, codec: Codec, layout: Layout = SAGE) -> EncodedExample:
    """`example` laid out as tokens, with segments, step index, step spans, answer mask and dependencies."""
    return layout.encode(codec, example.question, example.steps, example.answer, example.explanation,
                         options=example.options, dependencies=example.dependencies)
