"""Side-by-side timing: contenders run alternately, so machine noise falls on all of them alike.

Each contender is a zero-argument callable that returns only when its work is done (JAX callables block on
their outputs). The first call of each is its warm-up (compilation, caches, allocator growth), timed and
reported apart; then `repeats` rounds run every contender once per round, in turn, and the median is reported.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall times in seconds: `median_s` of the timed `runs_s`, and the first (warm-up) call `warmup_s`."""

    median_s: float
    runs_s: tuple[float, ...]
    warmup_s: float


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(contenders: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Times every contender `repeats` times, alternating, after one warm-up call each.

    Args:
      contenders: name -> blocking zero-argument callable.
      repeats: timed rounds (at least 1).

    Returns:
      name -> `Timing`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    warmup = {name: _seconds(fn) for name, fn in contenders.items()}
    runs = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(_seconds(fn))
    return {name: Timing(float(np.median(runs[name])), tuple(runs[name]), warmup[name]) for name in contenders}
