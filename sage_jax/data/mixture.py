"""Mixture specs: which sources a curriculum stage trains on, with what weights, and which tokens carry loss.

Source names (resolved by `sage_jax.data.sources.make_source`):
- `procedural/chain_sum`, `procedural/variable_chain`: the project's generators (known dependencies);
- `gym/<task>`: any reasoning-gym task, e.g. `gym/gsm_symbolic`;
- `prepared/<builder>/<split>`: a dataset prepared by `sage_jax.data.builders` (e.g. `prepared/sage_gsm8k/train`),
  read from the pipeline's `data_dir`.

The defaults work offline with no prepared files (DESIGN.md: chained sums are what a `tiny` model learns in
minutes, so they dominate): stage 1 is language-model pretraining on all text of every source, stage 2 is CoT
fine-tuning with loss on rationale and answer, stage 3 adds explanations rendered from ground-truth dependencies
and puts loss on them as well. `gym/gsm_symbolic` appears only in stage 1: with the 512-token vocabulary about
70% of its items exceed the `tiny` context of 256 tokens and are dropped (counted), which also lowers its
effective weight.
"""

from __future__ import annotations

import dataclasses
import math

from sage_jax.layout import Segment


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One source of a mixture.

    Attributes:
      name: a source name (see the module docstring).
      weight: relative sampling weight, positive.
      explain: attach explanations rendered from the source's dependencies (needs a source that has them).
      multiple_choice: turn each numeric item into a five-option AQUA-RAT-style item.
    """

    name: str
    weight: float
    explain: bool = False
    multiple_choice: bool = False

    def __post_init__(self):
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"SourceSpec({self.name!r}).weight must be a positive finite number, got {self.weight!r}")
        if self.name.count("/") < 1:
            raise ValueError(f"SourceSpec.name={self.name!r}: expected 'procedural/..', 'gym/..' or "
                             "'prepared/<builder>/<split>'")


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Sources with weights, and the segments whose tokens are training targets.

    Attributes:
      sources: the sources; weights need not sum to one. A name may come twice with different flags (plain
        chains beside explained ones), never twice alike.
      loss_segments: tokens of these segments get `loss_mask = 1`.
    """

    sources: tuple[SourceSpec, ...]
    loss_segments: tuple[Segment, ...] = (Segment.RATIONALE, Segment.ANSWER)

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "loss_segments", tuple(Segment(s) for s in self.loss_segments))
        if not self.sources:
            raise ValueError("Mixture.sources is empty")
        kinds = [(s.name, s.explain, s.multiple_choice) for s in self.sources]
        repeated = sorted({name for name, *flags in kinds if kinds.count((name, *flags)) > 1})
        if repeated:
            raise ValueError(f"Mixture.sources names {repeated} twice with the same flags (explain, "
                             "multiple_choice); one task may come twice only when rendered differently")
        if Segment.PAD in self.loss_segments or not self.loss_segments:
            raise ValueError(f"Mixture.loss_segments={self.loss_segments} must be non-empty and exclude PAD")

    @property
    def weights(self) -> tuple[float, ...]:
        """Weights normalised to sum to one."""
        total = sum(s.weight for s in self.sources)
        return tuple(s.weight / total for s in self.sources)


_ALL_TEXT = (Segment.PROMPT, Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION)

STAGES = {
    1: Mixture(sources=(SourceSpec("procedural/chain_sum", 0.4), SourceSpec("procedural/variable_chain", 0.2),
                        SourceSpec("gym/gsm_symbolic", 0.2), SourceSpec("gym/syllogism", 0.1),
                        SourceSpec("gym/basic_arithmetic", 0.1)),
               loss_segments=_ALL_TEXT),
    2: Mixture(sources=(SourceSpec("procedural/chain_sum", 0.7), SourceSpec("procedural/variable_chain", 0.2),
                        SourceSpec("gym/chain_sum", 0.1)),
               loss_segments=(Segment.RATIONALE, Segment.ANSWER)),
    3: Mixture(sources=(SourceSpec("procedural/chain_sum", 0.7, explain=True),
                        SourceSpec("procedural/variable_chain", 0.3, explain=True)),
               loss_segments=(Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION)),
}
"""The default mixture of each curriculum stage (1 pretraining, 2 CoT, 3 explanation)."""


def default_mixture(stage: int) -> Mixture:
    """The default mixture of curriculum `stage` (1, 2 or 3)."""
    if stage not in STAGES:
        raise ValueError(f"unknown curriculum stage {stage!r}; stages are {sorted(STAGES)}")
    return STAGES[stage]
