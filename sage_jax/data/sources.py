"""Resolve a `SourceSpec` to a random-access source of `Example`s (grain's `RandomAccessDataSource` protocol).

Every source is deterministic in `(seed, index)`, so that sharding by host is plain index slicing and a saved
iterator position is enough to resume.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Optional, Protocol

import numpy as np

from sage_jax.data import builders
from sage_jax.data.explanations import with_explanation
from sage_jax.data.gym import GymSource
from sage_jax.data.mixture import SourceSpec
from sage_jax.data.multiple_choice import to_multiple_choice
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource, VariableChainKnobs
from sage_jax.data.schema import Example

_PROCEDURAL = {"chain_sum": ChainSumKnobs(), "variable_chain": VariableChainKnobs()}


class ExampleSource(Protocol):
    """What the pipeline reads: `len(source)` and `source[i] -> Example`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


class MappedSource:
    """`fn(source[i], i)` for every index: a per-item transform that keeps random access."""

    def __init__(self, source: ExampleSource, fn: Callable[[Example, int], Example]):
        self._source, self._fn = source, fn

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        return self._fn(self._source[index], int(index))


def make_source(spec: SourceSpec, *, size: int, seed: int,
                data_dir: Optional[str | pathlib.Path] = None) -> ExampleSource:
    """The source `spec` names.

    Args:
      spec: the mixture entry.
      size: number of items of generated sources (`procedural/..`, `gym/..`); prepared data has its own length.
      seed: seed of generated sources.
      data_dir: where `prepared/..` datasets live (the `--data_dir` of `experiments.data`).
    """
    kind, _, rest = spec.name.partition("/")
    if kind == "procedural":
        if rest not in _PROCEDURAL:
            raise ValueError(f"unknown procedural source {spec.name!r}; choose one of "
                             f"{['procedural/' + n for n in _PROCEDURAL]}")
        source: ExampleSource = ProceduralSource(_PROCEDURAL[rest], size=size, seed=seed)
    elif kind == "gym":
        source = GymSource(rest, size=size, seed=seed)
    elif kind == "prepared":
        builder, _, split = rest.partition("/")
        if data_dir is None:
            raise ValueError(f"source {spec.name!r} needs a data_dir holding the prepared dataset")
        source = builders.PreparedSource(builder, split, data_dir)
    else:
        raise ValueError(f"source {spec.name!r}: unknown kind {kind!r}; expected procedural, gym or prepared")
    if spec.multiple_choice:
        source = MappedSource(source, lambda ex, i: to_multiple_choice(ex, np.random.default_rng([seed, i])))
    if spec.explain:
        source = MappedSource(source, lambda ex, i: with_explanation(ex))
    return source
