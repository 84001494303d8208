"""The jitted train step: golden losses, accumulation equals the full batch, descent, the non-finite guard,
the lambda = 0 ablation switch, and batch validation."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.layout import Segment
from sage_jax.train.losses import LossConfig
from sage_jax.train.state import init_train_state
from sage_jax.train.step import check_batch, compile_train_step
from tests.train.conftest import STEP_CFG, make_batch

KEY = jax.random.key(0)


def test_golden_losses_on_the_test_preset(step_fn):
    state = init_train_state(STEP_CFG, KEY)
    history = []
    for _ in range(3):
        state, metrics = step_fn(state, make_batch(0))
        history.append(jax.device_get(metrics))
    first = history[0]
    # An untrained model is near-uniform: the next-token loss starts at about ln(V) = ln 64 = 4.1589.
    assert abs(first["reasoning"] - np.log(64)) < 0.01
    golden = {"loss": 8.376498222351074, "reasoning": 4.160983085632324, "explanation": 4.146914958953857,
              "meta": 0.6860100626945496, "grad_norm": 3.7513670921325684}
    chex.assert_trees_all_close({k: first[k] for k in golden}, golden, rtol=1e-5)
    assert (first["loss_tokens"], first["explanation_tokens"], first["tokens"]) == (36, 6, 64)
    # Warmup starts at lr 0, so step 1 sees the initial parameters again; step 2 sees one real update.
    assert history[0]["learning_rate"] == 0 and history[1]["loss"] == first["loss"]
    chex.assert_trees_all_close(history[2]["loss"], 7.789759159088135, rtol=1e-5)


def test_accumulated_step_equals_the_full_batch_step(step_fn):
    accumulated = compile_train_step(dataclasses.replace(STEP_CFG, microbatches=4))
    batch = make_batch(3)
    states = [init_train_state(STEP_CFG, KEY), init_train_state(STEP_CFG, KEY)]
    for _ in range(3):  # three updates, so that learning rate and Adam moments are non-trivial
        states[0], full = step_fn(states[0], batch)
        states[1], micro = accumulated(states[1], batch)
        # Same sums in a different order: float32 rounding only.
        chex.assert_trees_all_close(jax.device_get(micro), jax.device_get(full), rtol=2e-6, atol=1e-7)
    chex.assert_trees_all_close(states[1].params, states[0].params, atol=2e-6)
    chex.assert_trees_all_close(states[1].opt_state, states[0].opt_state, atol=1e-6)
    assert int(states[1].step) == 3


def test_loss_goes_down_on_a_repeated_batch(step_fn):
    state = init_train_state(STEP_CFG, KEY)
    batch = make_batch(5)
    losses_seen = []
    for _ in range(20):
        state, metrics = step_fn(state, batch)
        losses_seen.append(float(metrics["reasoning"]))
    assert losses_seen[-1] < 0.6 * losses_seen[0], losses_seen
    assert int(state.step) == 20


def test_non_finite_step_returns_its_input_state(step_fn):
    state = init_train_state(STEP_CFG, KEY)
    state, _ = step_fn(state, make_batch(0))
    before = jax.device_get(state)
    before_key = jax.random.key_data(state.rng)
    bad = make_batch(1)
    bad["tokens"][2, 3] = STEP_CFG.model.vocab_size  # out of vocabulary: embeds as NaN under jit
    after, metrics = step_fn(state, bad)
    assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
    chex.assert_trees_all_equal(jax.device_get(after.params), before.params)
    chex.assert_trees_all_equal(jax.device_get(after.opt_state), before.opt_state)
    assert int(after.step) == 1
    np.testing.assert_array_equal(jax.random.key_data(after.rng), before_key)


def test_zero_explanation_weight_makes_explanation_tokens_irrelevant():
    """The ablation switch is honest: with lambda1 = 0 the update is bit for bit the one of the same batch
    with its explanation removed (padded)."""
    cfg = dataclasses.replace(STEP_CFG, loss=LossConfig(lambda_explanation=0.0))
    step = compile_train_step(cfg)
    with_expl = make_batch(2)
    without = {k: v.copy() for k, v in with_expl.items()}
    drop = without["segments"] == Segment.EXPLANATION
    without["segments"][drop] = Segment.PAD
    without["tokens"][drop] = 0
    a, ma = step(init_train_state(cfg, KEY), with_expl)
    b, mb = step(init_train_state(cfg, KEY), without)
    assert float(ma["explanation"]) > 0 and float(mb["explanation"]) == 0
    chex.assert_trees_all_equal(jax.device_get(a.params), jax.device_get(b.params))
    assert float(ma["loss"]) == float(mb["loss"])


def test_batch_errors_name_the_problem():
    batch = make_batch(0)
    with pytest.raises(ValueError, match="no 'segments' field"):
        check_batch({"tokens": batch["tokens"]}, 1)
    with pytest.raises(ValueError, match="not divisible by StepConfig.microbatches=3"):
        check_batch(batch, 3)
    with pytest.raises(ValueError, match=r"\['extra'\] has shape \(3,\)"):
        check_batch({**batch, "extra": jnp.zeros(3)}, 1)
    with pytest.raises(ValueError, match="must hold integers"):
        check_batch({**batch, "segments": batch["segments"].astype(np.float32)}, 1)


def test_consistency_callable_is_averaged_over_microbatches_and_weighted():
    """A consistency term that depends on the parameters and the batch: under accumulation it is the mean
    of the microbatch values; its weight scales its gradient contribution."""
    def consistency(params, batch, out, key):
        return jnp.mean(out.logits[:, :, 0] ** 2) + 0.0 * jax.random.uniform(key)

    cfg = dataclasses.replace(STEP_CFG, microbatches=2, loss=LossConfig(lambda_consistency=0.5))
    state = init_train_state(cfg, KEY)
    batch = make_batch(4)
    _, metrics = compile_train_step(cfg, consistency=consistency)(state, batch)
    out = sj.forward(init_train_state(cfg, KEY).params, jnp.asarray(batch["tokens"]), cfg.model,
                     mask=batch["segments"] != Segment.PAD)
    halves = [jnp.mean(out.logits[j::2, :, 0] ** 2) for j in range(2)]
    chex.assert_trees_all_close(metrics["consistency"], (halves[0] + halves[1]) / 2, rtol=1e-5)
    chex.assert_trees_all_close(metrics["loss"], metrics["reasoning"] + metrics["explanation"]
                                + 0.5 * metrics["consistency"] + 0.1 * metrics["meta"], rtol=1e-6)
    _, constant = compile_train_step(STEP_CFG, consistency=0.25)(init_train_state(STEP_CFG, KEY), batch)
    chex.assert_trees_all_close(constant["consistency"], 0.25, rtol=1e-6)
