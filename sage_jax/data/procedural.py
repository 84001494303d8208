"""Procedural reasoning problems whose step dependencies are known: the ground truth for decision points.

Three generators, all pure functions of a `numpy.random.Generator`:

- `chain_sum`: `"3+1+9+8=?"` with steps `"3+1=4"`, `"4+9=13"`, `"13+8=21"`. Step `k` depends on the running
  total (the question's first term for step 0, else the result of step `k-1`) and on the question's term
  `"+x"` it adds. DESIGN.md measured this task learnable by a `tiny`-sized model in minutes; it is the demo's.
- `spoken_sum`: the same problems in words, `"What is 3 + 1 + 9?"` with steps `"3 + 1 = 4"`, `"4 + 9 = 13"`:
  what a pretrained chat model is asked (`sage_jax.chat`).
- `variable_chain`: named variables, some given, some defined from others, shuffled among distractor facts:
  `"e=b-d, b=4, d=c+a, a=7, c=2, f=a+c. e=?"` with steps `"d=c+a=2+7=9"`, `"e=b-d=4-9=-5"`. A step depends on
  the question fact that defines its variable and on the fact or earlier step that gives each operand's value;
  distractors (facts no step needs) are never dependencies.

Dependencies are character `Span`s (`sage_jax.data.schema`); `Tokenizer.encode_example` turns them into token
indices. `ProceduralSource` serves either generator as a random-access source (`len`, `[i]`), deterministic in
`(seed, index)`, with its difficulty knobs drawn per example from inclusive ranges and kept in `metadata`.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Callable

import numpy as np

from sage_jax.data.schema import Example
from sage_jax.layout import QUESTION_PART, Span

_NAMES = string.ascii_lowercase


def chain_sum(rng: np.random.Generator, n_terms: int, max_value: int) -> Example:
    """A chained sum of `n_terms` terms in `[0, max_value]`, one step per addition.

    Returns:
      An `Example` with `n_terms - 1` steps and their dependencies.
    """
    terms = _draw_terms(rng, n_terms, max_value, "chain_sum")
    term_spans, question, position = [], "", 0
    for i, term in enumerate(terms):
        piece = str(term) if i == 0 else f"+{term}"
        term_spans.append(Span(QUESTION_PART, position, position + len(piece)))
        question += piece
        position += len(piece)
    steps, deps = _sum_steps(terms, term_spans, plus="+", equals="=")
    return Example(question=question + "=?", steps=steps, answer=str(sum(terms)), dependencies=deps,
                   source="procedural/chain_sum", metadata={"n_terms": n_terms, "max_value": max_value})


def spoken_sum(rng: np.random.Generator, n_terms: int, max_value: int) -> Example:
    """`chain_sum`'s problem (the same terms for the same `rng` state) written as a person would ask and
    answer it: `"What is 3 + 4 + 5?"`, steps `"3 + 4 = 7"`, `"7 + 5 = 12"`. A pretrained chat model's problem
    set; a term's dependency span is its digits."""
    terms = _draw_terms(rng, n_terms, max_value, "spoken_sum")
    question, term_spans = "What is ", []
    for i, term in enumerate(terms):
        question += "" if i == 0 else " + "
        term_spans.append(Span(QUESTION_PART, len(question), len(question) + len(str(term))))
        question += str(term)
    steps, deps = _sum_steps(terms, term_spans, plus=" + ", equals=" = ")
    return Example(question=question + "?", steps=steps, answer=str(sum(terms)), dependencies=deps,
                   source="procedural/spoken_sum", metadata={"n_terms": n_terms, "max_value": max_value})


def _draw_terms(rng: np.random.Generator, n_terms: int, max_value: int, task: str) -> list[int]:
    if n_terms < 2:
        raise ValueError(f"{task}: n_terms={n_terms} must be at least 2")
    if max_value < 1:
        raise ValueError(f"{task}: max_value={max_value} must be at least 1")
    return [int(x) for x in rng.integers(0, max_value + 1, size=n_terms)]


def _sum_steps(terms: list[int], term_spans: list[Span], *, plus: str, equals: str
               ) -> tuple[tuple[str, ...], tuple[tuple[Span, Span], ...]]:
    """The steps `total plus term equals new_total` and what each rests on: the running total (the first term,
    then the previous step's result) and the term it adds."""
    steps, deps, total = [], [], terms[0]
    for k, term in enumerate(terms[1:]):
        lhs = f"{total}{plus}{term}{equals}"
        total += term
        steps.append(f"{lhs}{total}")
        running = term_spans[0] if k == 0 else Span(k - 1, steps[k - 1].rindex(equals) + len(equals),
                                                     len(steps[k - 1]))
        deps.append((running, term_spans[k + 1]))
    return tuple(steps), tuple(deps)


def variable_chain(rng: np.random.Generator, n_steps: int, n_distractors: int, max_value: int) -> Example:
    """A chain of `n_steps` variable definitions among `n_distractors` irrelevant facts.

    Each step defines a new variable as `x + y` or `x - y` of two distinct earlier variables; the first operand
    of step `k > 0` is the variable of step `k - 1`, so the chain really has `n_steps` sequential steps.
    Given variables take values in `[1, max_value]`. Distractors are extra given variables and extra
    definitions from given variables that the target never needs; a given variable no step uses is one more.

    Returns:
      An `Example` with `n_steps` steps (`"v=x+y=3+4=7"`) and their dependencies.
    """
    if n_steps < 1 or n_distractors < 0 or max_value < 1:
        raise ValueError(f"variable_chain: need n_steps >= 1, n_distractors >= 0, max_value >= 1; got "
                         f"n_steps={n_steps}, n_distractors={n_distractors}, max_value={max_value}")
    n_given = n_steps + 1
    if n_given + n_steps + n_distractors > len(_NAMES):
        raise ValueError(f"variable_chain: {n_given + n_steps + n_distractors} variables exceed the "
                         f"{len(_NAMES)} names a-z; lower n_steps or n_distractors")
    names = [str(n) for n in rng.permutation(list(_NAMES))[: n_given + n_steps + n_distractors]]
    values: dict[str, int] = {}
    facts: dict[str, str] = {}  # variable -> its fact in the question ("b=4" or "d=c+a")
    definitions: dict[str, tuple[str, str, str]] = {}
    given = names[:n_given]
    for name in given:
        values[name] = int(rng.integers(1, max_value + 1))
        facts[name] = f"{name}={values[name]}"

    def define(name: str, x: str, y: str) -> None:
        op = "+" if rng.random() < 0.5 else "-"
        definitions[name] = (x, op, y)
        values[name] = values[x] + values[y] if op == "+" else values[x] - values[y]
        facts[name] = f"{name}={x}{op}{y}"

    chain = names[n_given:n_given + n_steps]
    for k, name in enumerate(chain):
        earlier = given + chain[:k]
        x = chain[k - 1] if k else given[int(rng.integers(len(given)))]
        y = str(rng.choice([v for v in earlier if v != x]))
        define(name, x, y)
    for name in names[n_given + n_steps:]:
        if rng.random() < 0.5:
            values[name] = int(rng.integers(1, max_value + 1))
            facts[name] = f"{name}={values[name]}"
        else:
            x, y = (str(v) for v in rng.choice(given, size=2, replace=False))
            define(name, x, y)
    target = chain[-1]

    order = [str(v) for v in rng.permutation(list(facts))]
    fact_spans, question = {}, ""
    for name in order:
        if question:
            question += ", "
        fact_spans[name] = Span(QUESTION_PART, len(question), len(question) + len(facts[name]))
        question += facts[name]
    question += f". {target}=?"

    steps, deps, step_of = [], [], {}
    for k, name in enumerate(chain):
        x, op, y = definitions[name]
        steps.append(f"{name}={x}{op}{y}={values[x]}{op}{values[y]}={values[name]}")
        needed = [fact_spans[name]]
        for operand in (x, y):
            needed.append(Span(step_of[operand], 0, len(steps[step_of[operand]])) if operand in step_of
                          else fact_spans[operand])
        deps.append(tuple(needed))
        step_of[name] = k
    return Example(question=question, steps=tuple(steps), answer=str(values[target]), dependencies=tuple(deps),
                   source="procedural/variable_chain",
                   metadata={"n_steps": n_steps, "n_distractors": n_distractors, "max_value": max_value})


@dataclasses.dataclass(frozen=True)
class ChainSumKnobs:
    """Difficulty of `chain_sum`, each an inclusive `(low, high)` range drawn per example.

    Attributes:
      n_terms: terms per problem (`n_terms - 1` steps).
      max_value: the largest term.
      n_terms_weights: relative weights of `n_terms = low, ..., high` (empty: uniform). The longest chains are
        the hardest to learn and hold every shorter chain's steps, so a curriculum can draw them more often.
    """

    n_terms: tuple[int, int] = (3, 4)
    max_value: tuple[int, int] = (9, 9)
    n_terms_weights: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class SpokenSumKnobs(ChainSumKnobs):
    """`ChainSumKnobs` for `spoken_sum`: the same problems, written in words."""


@dataclasses.dataclass(frozen=True)
class VariableChainKnobs:
    """Difficulty of `variable_chain`, each an inclusive `(low, high)` range drawn per example."""

    n_steps: tuple[int, int] = (2, 3)
    n_distractors: tuple[int, int] = (0, 2)
    max_value: tuple[int, int] = (9, 9)


_GENERATORS: dict[type, Callable[..., Example]] = {ChainSumKnobs: chain_sum, SpokenSumKnobs: spoken_sum,
                                                   VariableChainKnobs: variable_chain}


@dataclasses.dataclass(frozen=True)
class ProceduralSource:
    """A random-access source of `size` procedural examples; item `i` depends only on `(seed, i)`.

    It satisfies grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`).
    """

    knobs: ChainSumKnobs | SpokenSumKnobs | VariableChainKnobs
    size: int
    seed: int = 0

    def __post_init__(self):
        if type(self.knobs) not in _GENERATORS:
            raise TypeError(f"ProceduralSource.knobs must be one of {[k.__name__ for k in _GENERATORS]}, "
                            f"got {type(self.knobs).__name__}")
        name = type(self.knobs).__name__
        for field in _ranges(self.knobs):
            low, high = getattr(self.knobs, field.name)
            if low > high:
                raise ValueError(f"{name}.{field.name}=({low}, {high}): low exceeds high")
            weights = getattr(self.knobs, field.name + _WEIGHTS, ())
            if weights and (len(weights) != high - low + 1 or min(weights) < 0 or sum(weights) <= 0):
                raise ValueError(f"{name}.{field.name}{_WEIGHTS}={tuple(weights)}: give one non-negative weight per "
                                 f"value of {field.name}=({low}, {high}), {high - low + 1} in all, not all zero")

    @property
    def name(self) -> str:
        return _GENERATORS[type(self.knobs)].__name__

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name} index {index} outside [0, {self.size})")
        rng = np.random.default_rng([self.seed, index])
        drawn = {f.name: _draw(rng, getattr(self.knobs, f.name), getattr(self.knobs, f.name + _WEIGHTS, ()))
                 for f in _ranges(self.knobs)}
        return _GENERATORS[type(self.knobs)](rng, **drawn)


_WEIGHTS = "_weights"
"""The suffix of a knob's optional weights field (`n_terms_weights` weighs the values of `n_terms`)."""


def _ranges(knobs) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(knobs) if not f.name.endswith(_WEIGHTS)]


def _draw(rng: np.random.Generator, bounds: tuple[int, int], weights: tuple[float, ...]) -> int:
    low, high = bounds
    if not weights:
        return int(rng.integers(low, high + 1))
    p = np.asarray(weights, np.float64)
    return int(rng.choice(np.arange(low, high + 1), p=p / p.sum()))
