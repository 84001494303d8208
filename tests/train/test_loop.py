"""The loop's schedule with a fake step: step t is dispatched before step t - 1's metrics are read, and a
checkpoint is written only after its step's metrics were read and found finite."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from sage_jax.train.loop import NonFiniteError, train
from sage_jax.train.state import TrainState


class Recorder:
    """A fake step, metrics and checkpointer that write what happens, in order, into `events`."""

    def __init__(self, bad_step=None):
        self.events, self.bad_step = [], bad_step

    def step(self, state, batch):
        t = int(state.step)
        self.events.append(f"dispatch {t}")
        metrics = {"finite": jnp.asarray(t != self.bad_step), "loss": jnp.float32(1.0 if t != self.bad_step
                                                                                   else float("nan")),
                   "reasoning": 1.0, "explanation": 0.0, "consistency": 0.0, "meta": 0.0, "grad_norm": 1.0}
        return state.replace(step=state.step + 1), metrics

    def report(self, t, metrics):
        self.events.append(f"read {t}")

    def save(self, state, data_state):
        self.events.append(f"save {int(state.step)}")

    def wait(self):
        self.events.append("wait")

    def check(self):
        pass

    def observe(self, step, loss):
        pass


def _state(step=0):
    return TrainState(step=jnp.int32(step), params={}, opt_state=(), rng=jnp.zeros(2))


def test_step_t_is_dispatched_before_step_t_minus_1_is_read():
    rec = Recorder()
    train(rec.step, _state(), iter(range(10)), num_steps=4, checkpointer=rec, save_every=0, report=rec.report)
    assert rec.events == ["dispatch 0", "dispatch 1", "read 0", "dispatch 2", "read 1", "dispatch 3", "read 2",
                          "read 3", "save 4", "wait"]


def test_checkpoints_wait_for_their_steps_metrics_and_resume_counts_from_the_state():
    rec = Recorder()
    train(rec.step, _state(2), iter(range(10)), num_steps=6, checkpointer=rec, save_every=2, report=rec.report)
    assert rec.events == ["dispatch 2", "dispatch 3", "read 2", "read 3", "save 4", "dispatch 4", "dispatch 5",
                          "read 4", "read 5", "save 6", "wait"]


def test_a_non_finite_step_stops_before_any_later_save():
    rec = Recorder(bad_step=2)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 2 .batch index 2"):
        train(rec.step, _state(), iter(range(10)), num_steps=6, checkpointer=rec, save_every=3, report=rec.report)
    assert rec.events == ["dispatch 0", "dispatch 1", "read 0", "dispatch 2", "read 1", "wait"]


def test_running_out_of_data_names_the_step():
    rec = Recorder()
    with pytest.raises(RuntimeError, match="ran out before step 2"):
        train(rec.step, _state(), iter(range(2)), num_steps=5, report=rec.report)
