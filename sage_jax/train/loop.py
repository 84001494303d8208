"""The training loop: dispatch step `t`, then read step `t - 1`'s metrics, so the host never waits for the
device except where it must (at checkpoints and at the end).

Step numbering: step index `t` is the update that consumes batch `t` of the data stream and takes
`state.step` from `t` to `t + 1`; metrics are logged under `t`, and the checkpoint written after it is named
`t + 1` (the number of updates it contains), so a run restored from checkpoint `s` continues with step `s`.

Safety: `train_step` never applies a non-finite update, and this loop raises `NonFiniteError` as soon as it
reads such a step's metrics. Before every checkpoint the loop reads that step's metrics first, so a
checkpoint is only ever written from a state whose last update was finite. Every step's loss also goes to
`Checkpointer.observe`, which judges the checkpoint whose parameters computed it (finite, not exploding), so
that rotation keeps the last good checkpoint of a run that diverges slowly.

I/O: a background checkpoint write that failed (a full disk) is raised at the next step by
`Checkpointer.check`, and the metrics writer raises at the step it fails, so a run stops within a step or two
with every earlier checkpoint intact.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np

from sage_jax.train.checkpoint import Checkpointer, DataState
from sage_jax.train.losses import TERMS
from sage_jax.train.state import TrainState

StepFn = Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, Mapping[str, jax.Array]]]
ReportFn = Callable[[int, Mapping[str, np.ndarray]], Any]


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite loss or gradient. The update was not applied.

    Attributes:
      step: the step index.
      batch_index: index of the offending batch in the data stream (counted from step 0 of the run).
      metrics: the step's metrics on the host (every loss term, the gradient norm).
    """

    def __init__(self, step: int, batch_index: int, metrics: Mapping[str, np.ndarray]):
        self.step, self.batch_index, self.metrics = step, batch_index, dict(metrics)
        bad = [name for name in ("loss", "grad_norm") if not np.isfinite(metrics[name])]
        terms = ", ".join(f"{name}={float(metrics[name]):.6g}" for name in ("loss",) + TERMS + ("grad_norm",)
                          if name in metrics)  # a step that trains the IAL alone has no model terms
        super().__init__(f"non-finite {' and '.join(bad) or 'value'} at step {step} (batch index {batch_index} "
                         f"of the data stream): {terms}. The update was not applied and no checkpoint was "
                         "written from this state.")


def train(step_fn: StepFn, state: TrainState, batches: Iterator[Mapping[str, Any]], *, num_steps: int,
          checkpointer: Optional[Checkpointer] = None, save_every: int = 0,
          data_state: Optional[Callable[[], DataState]] = None, report: Optional[ReportFn] = None) -> TrainState:
    """Runs steps `state.step .. num_steps - 1` and returns the final state.

    Args:
      step_fn: the compiled step (`compile_train_step`); it donates `state`.
      state: the state to start from (fresh, or `Checkpointer.restore_latest(...).state`).
      batches: yields batch `state.step`, then the next ones; the loop draws exactly one per step and
        never ahead, so `data_state()` after step `t` describes the stream after batch `t`.
      num_steps: the step count to reach.
      checkpointer: where to save; with it, the final state is always saved.
      save_every: also save after every `save_every` steps (0: only at the end).
      data_state: returns the data iterator's state, saved with each checkpoint.
      report: called as `report(t, metrics)` with step `t`'s metrics on the host (a `metrics.Reporter`).

    Raises:
      NonFiniteError: a step's loss or gradient was not finite.
    """
    start = int(jax.device_get(state.step))
    pending: Optional[tuple[int, Mapping[str, jax.Array]]] = None
    try:
        for t in range(start, num_steps):
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(f"the data iterator ran out before step {t} (of {num_steps})") from None
            state, metrics = step_fn(state, batch)
            if checkpointer is not None:
                checkpointer.check()
            if pending is not None:
                _finish(*pending, report, checkpointer)
            pending = (t, metrics)
            last = t + 1 == num_steps
            if checkpointer is not None and (last or (save_every and (t + 1) % save_every == 0)):
                _finish(*pending, report, checkpointer)
                pending = None
                checkpointer.save(state, data_state() if data_state is not None else None)
        if pending is not None:
            _finish(*pending, report, checkpointer)
    finally:
        if checkpointer is not None:
            checkpointer.wait()
    return state


def _finish(step: int, metrics: Mapping[str, jax.Array], report: Optional[ReportFn],
            checkpointer: Optional[Checkpointer]) -> None:
    """Brings step `step`'s metrics to the host, judges the checkpoint of `step`, stops on a non-finite step,
    and reports."""
    host = jax.device_get(dict(metrics))
    if checkpointer is not None:
        checkpointer.observe(step, float(host["loss"]) if bool(host["finite"]) else float("nan"))
    if not bool(host["finite"]):
        raise NonFiniteError(step, step, host)
    if report is not None:
        report(step, host)
