"""Helpers shared by the data tests: recompute a step from only the tokens it declares as dependencies."""

from __future__ import annotations

import re

from sage_jax.data.tokenizer import Tokenizer
from sage_jax.layout import EncodedExample


def dependency_runs(tokenizer: Tokenizer, encoded: EncodedExample, step: int) -> list[str]:
    """The text of each maximal run of consecutive tokens that `step` depends on, in sequence order."""
    positions = encoded.dependencies_of(step)
    runs, current = [], [positions[0]]
    for p in positions[1:]:
        if p == current[-1] + 1:
            current.append(p)
        else:
            runs.append(current)
            current = [p]
    runs.append(current)
    return [tokenizer.decode(encoded.tokens[run]).strip() for run in runs]


def sum_of_terms(runs: list[str]) -> int:
    """Chained sums: the value of a step is the signed sum of the numbers it may see."""
    return sum(int(x.replace(" ", "")) for run in runs for x in re.findall(r"[+-]? ?\d+", run))


def evaluate_chain(runs: list[str]) -> int:
    """Variable chains: one run defines the variable by names (`d=c+a`); the others give values (`c=2`,
    `x=a+b=1+2=3`). Raises KeyError or ValueError when a needed fact is missing."""
    values, definitions = {}, []
    for run in runs:
        parts = run.split("=")
        if re.search(r"[a-z]", parts[-1]):
            definitions.append(parts)
        else:
            values[parts[0]] = int(parts[-1])
    if len(definitions) != 1:
        raise ValueError(f"expected one defining fact among {runs}")
    x, op, y = re.fullmatch(r"([a-z])([+-])([a-z])", definitions[0][1]).groups()
    return values[x] + values[y] if op == "+" else values[x] - values[y]


def step_value(step: str) -> int:
    """The result a step states: the number after its last `=`."""
    return int(step.rsplit("=", 1)[1].replace(" ", ""))
