"""Checkpoints: exact resume through the loop, fallback past a corrupted checkpoint, opaque data state,
and the non-finite stop that leaves the last good checkpoint as the latest."""

from __future__ import annotations

import os

import chex
import jax
import numpy as np
import pytest

from sage_jax.train.checkpoint import CheckpointError, Checkpointer
from sage_jax.train.loop import NonFiniteError, train
from sage_jax.train.state import abstract_state, init_train_state
from tests.train.conftest import STEP_CFG, Batches

N = 3


def _run(step_fn, state, batches, num_steps, checkpointer=None, save_every=0):
    seen = {}
    state = train(step_fn, state, batches, num_steps=num_steps, checkpointer=checkpointer,
                  save_every=save_every, data_state=batches.state,
                  report=lambda t, m: seen.setdefault(t, {k: m[k] for k in ("loss", "meta", "grad_norm")}))
    return state, seen


def _restore(directory):
    with Checkpointer(directory) as ckpt:
        return ckpt.restore_latest(abstract_state(STEP_CFG))


def test_n_steps_restart_n_steps_equals_2n_steps_bit_for_bit(step_fn, tmp_path):
    straight, straight_metrics = _run(step_fn, init_train_state(STEP_CFG, jax.random.key(0)), Batches(), 2 * N)

    with Checkpointer(tmp_path, keep=2) as ckpt:
        _run(step_fn, init_train_state(STEP_CFG, jax.random.key(0)), Batches(), N, ckpt)
    restored = _restore(tmp_path)  # a fresh manager and a fresh state, as after a kill
    assert restored.step == N and restored.data_state == {"next": N} and restored.skipped == ()
    resumed, resumed_metrics = _run(step_fn, restored.state, Batches(start=restored.data_state["next"]), 2 * N)

    chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(straight.params))
    chex.assert_trees_all_equal(jax.device_get(resumed.opt_state), jax.device_get(straight.opt_state))
    np.testing.assert_array_equal(jax.random.key_data(resumed.rng), jax.random.key_data(straight.rng))
    assert sorted(resumed_metrics) == list(range(N, 2 * N))
    assert resumed_metrics == {t: straight_metrics[t] for t in range(N, 2 * N)}


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(step_fn, tmp_path, caplog):
    with Checkpointer(tmp_path, keep=3) as ckpt:
        state = _run(step_fn, init_train_state(STEP_CFG, jax.random.key(0)), Batches(), 2, ckpt, save_every=1)[0]
        assert ckpt.steps() == [1, 2]
    previous = _restore(tmp_path).state  # step 2, intact
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"not a checkpoint")
    with Checkpointer(tmp_path, keep=3) as ckpt:
        restored = ckpt.restore_latest(abstract_state(STEP_CFG))
        assert restored.step == 1 and restored.data_state == {"next": 1}
        assert [path for path, _ in restored.skipped] == [str(tmp_path / "2")]
        assert str(tmp_path / "2") in caplog.text
        # The bad checkpoint is kept aside, so a resumed run can save step 2 again.
        assert (tmp_path / "2.corrupt").is_dir() and ckpt.steps() == [1]
        again = _run(step_fn, restored.state, Batches(start=1), 2, ckpt, save_every=1)[0]
        assert ckpt.steps() == [1, 2]
    chex.assert_trees_all_equal(jax.device_get(again.params), jax.device_get(state.params))
    chex.assert_trees_all_equal(jax.device_get(previous.params), jax.device_get(state.params))


def test_every_checkpoint_failing_is_an_error_listing_each_path(step_fn, tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(init_train_state(STEP_CFG, jax.random.key(0)))
    (tmp_path / "0" / "meta" / "metadata").write_text("{broken")
    with pytest.raises(CheckpointError, match=str(tmp_path / "0")):
        _restore(tmp_path)
    with Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.restore_latest(abstract_state(STEP_CFG)) is None


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    state = init_train_state(STEP_CFG, jax.random.key(0))
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(state.replace(step=np.int32(step)), {"next": step})
        ckpt.wait()
        assert ckpt.steps() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]


def test_bytes_data_state_round_trips(tmp_path):
    blob = bytes(range(256))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(init_train_state(STEP_CFG, jax.random.key(0)), blob)
        with pytest.raises(ValueError, match="JSON-serialisable"):
            ckpt.save(init_train_state(STEP_CFG, jax.random.key(0)).replace(step=np.int32(1)), {1j})
    assert _restore(tmp_path).data_state == blob


def test_non_finite_batch_stops_the_run_and_keeps_the_last_good_checkpoint(step_fn, tmp_path):
    """Batch 4 holds an out-of-vocabulary id (NaN embedding). Checkpoints every 3 steps: step 3 is saved;
    the error is raised one step late (metrics are read with a lag), and nothing else is saved."""
    with Checkpointer(tmp_path, keep=5) as ckpt:
        with pytest.raises(NonFiniteError) as info:
            _run(step_fn, init_train_state(STEP_CFG, jax.random.key(0)), Batches(poison=4), 8, ckpt,
                 save_every=3)
        assert ckpt.steps() == [3]
    error = info.value
    assert (error.step, error.batch_index) == (4, 4)
    message = str(error)
    for text in ("non-finite loss and grad_norm at step 4", "batch index 4", "reasoning=nan", "explanation=",
                 "meta=", "consistency=", "no checkpoint was written"):
        assert text in message, message
    restored = _restore(tmp_path)
    assert restored.step == 3
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(jax.device_get(restored.state.params)))
