"""Shared fixtures of the training tests: one small `StepConfig` on the `test` preset, its compiled step
(compiled once per session: the step donates its state, so every test builds its own state), and a
deterministic batch stream with a JSON state."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.layout import Segment
from sage_jax.train.optim import OptimConfig
from sage_jax.train.state import StepConfig
from sage_jax.train.step import compile_train_step

STEP_CFG = StepConfig(model=sj.configs.get("test"),
                      optim=OptimConfig(peak_lr=1e-2, warmup_steps=2, total_steps=40, max_grad_norm=1.0))
BATCH = 4
# prompt 4, rationale 6, answer 3, explanation 3 tokens; row r has its last r tokens padded.
_LAYOUT = ([Segment.PROMPT] * 4 + [Segment.RATIONALE] * 6 + [Segment.ANSWER] * 3
           + [Segment.EXPLANATION] * 3)
SEQ = len(_LAYOUT)


def make_batch(seed: int, batch: int = BATCH) -> dict[str, np.ndarray]:
    """`tokens [batch, SEQ]` (ids 7..V-1, so no special ids by accident) and `segments [batch, SEQ]`."""
    tokens = np.array(jax.random.randint(jax.random.key(1000 + seed), (batch, SEQ), 7,
                                          STEP_CFG.model.vocab_size), np.int32)
    segments = np.tile(np.asarray(_LAYOUT, np.int32), (batch, 1))
    for row in range(batch):
        if row:
            segments[row, -row:] = Segment.PAD
            tokens[row, -row:] = layout.PAD
    return {"tokens": tokens, "segments": segments}


class Batches:
    """Batch `i` is `make_batch(i)`; the state is `{"next": i}`. `poison` puts an out-of-vocabulary id into
    that batch, which the model embeds as NaN under jit."""

    def __init__(self, start: int = 0, poison: int | None = None):
        self.index, self.poison = start, poison

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = make_batch(self.index)
        if self.index == self.poison:
            batch["tokens"][1, 6] = STEP_CFG.model.vocab_size + 5
        self.index += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"next": self.index}


@pytest.fixture(scope="session")
def step_fn():
    return compile_train_step(STEP_CFG)
