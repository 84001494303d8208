"""Loss terms against numpy, masks and alignment, empty masks, calibration of the meta loss, weights."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax.train import losses
from sage_jax.train.losses import LossConfig


def _np_nll(logits, targets):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return lse - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]


def test_shift_targets_aligns_each_position_with_the_next_token():
    tokens = jnp.array([[1, 6, 40, 3, 41, 4, 42, 2]])
    segments = jnp.array([[1, 1, 1, 2, 2, 3, 3, 3]], jnp.int8)
    targets, target_segments = losses.shift_targets(tokens, segments)
    np.testing.assert_array_equal(targets, [[6, 40, 3, 41, 4, 42, 2, 0]])
    np.testing.assert_array_equal(target_segments, [[1, 1, 2, 2, 3, 3, 3, 0]])
    np.testing.assert_array_equal(losses.reasoning_mask(target_segments), [[0, 0, 1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(losses.explanation_mask(jnp.array([[4, 3, 0]])), [[1, 0, 0]])


def test_nll_losses_match_numpy():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    mask = jnp.array([[1, 1, 0, 1, 0], [0, 0, 1, 1, 1]], bool)
    want = _np_nll(logits, targets)[np.asarray(mask)].mean()
    chex.assert_trees_all_close(losses.reasoning_loss(logits, targets, mask), want, rtol=1e-6)
    chex.assert_trees_all_close(losses.explanation_loss(logits, targets, mask), want, rtol=1e-6)
    total = _np_nll(logits, targets)[np.asarray(mask)].sum()
    chex.assert_trees_all_close(losses.reasoning_loss(logits, targets, mask, normalizer=20.0), total / 20,
                                rtol=1e-6)


def test_empty_mask_gives_zero_loss_and_zero_gradient():
    logits = jax.random.normal(jax.random.key(2), (1, 3, 4))
    targets = jnp.zeros((1, 3), jnp.int32)
    empty = jnp.zeros((1, 3), bool)
    value, grad = jax.value_and_grad(lambda l: losses.reasoning_loss(l, targets, empty))(logits)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_masked_out_non_finite_values_do_not_reach_the_loss_value():
    partial = jnp.array([[True, False, False]])
    logits = jnp.zeros((1, 3, 4)).at[0, 1:].set(jnp.nan)
    chex.assert_trees_all_close(losses.reasoning_loss(logits, jnp.zeros((1, 3), jnp.int32), partial),
                                np.log(4), rtol=1e-6)
    meta = jnp.array([[0.0, jnp.nan, jnp.inf]])
    chex.assert_trees_all_close(losses.meta_confidence_loss(meta, jnp.ones((1, 3)), partial), np.log(2),
                                rtol=1e-6)
    assert float(losses.meta_confidence_loss(meta, jnp.ones((1, 3)), jnp.zeros((1, 3), bool))) == 0.0


def test_meta_loss_matches_numpy_bce_and_is_minimised_by_the_calibrated_confidence():
    meta = jnp.array([[2.0, -1.0, 0.5]])
    correct = jnp.array([[1.0, 0.0, 1.0]])
    mask = jnp.array([[True, True, False]])
    p = 1 / (1 + np.exp(-np.asarray(meta[0, :2], np.float64)))
    want = -(np.log(p[0]) + np.log(1 - p[1])) / 2
    chex.assert_trees_all_close(losses.meta_confidence_loss(meta, correct, mask), want, rtol=1e-6)
    # Positions right 70% of the time: the best constant confidence is 0.7 (logit log(0.7 / 0.3)).
    hits = jnp.array([[1.0] * 7 + [0.0] * 3])
    all_on = jnp.ones_like(hits, bool)
    grad = jax.grad(lambda z: losses.meta_confidence_loss(jnp.full_like(hits, z), hits, all_on))
    assert abs(float(grad(float(np.log(0.7 / 0.3))))) < 1e-6
    assert float(grad(0.0)) < 0 < float(grad(2.0))


def test_token_correctness_is_the_greedy_hit_without_gradient():
    logits = jnp.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(losses.token_correctness(logits, jnp.array([[1, 2]])), [[1.0, 0.0]])
    grad = jax.grad(lambda l: losses.token_correctness(l, jnp.array([[1, 2]])).sum())(logits)
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_combine_losses_weights_and_drops_zero_weight_terms():
    cfg = LossConfig(lambda_explanation=0.5, lambda_consistency=2.0, lambda_meta=0.1)
    terms = {"reasoning": 1.0, "explanation": 2.0, "consistency": 0.25, "meta": 3.0}
    chex.assert_trees_all_close(losses.combine_losses(terms, cfg), 1.0 + 1.0 + 0.5 + 0.3, rtol=1e-6)
    off = LossConfig(lambda_explanation=0.0, lambda_consistency=0.0, lambda_meta=0.0)
    nan_terms = {"reasoning": 1.5, "explanation": jnp.nan, "consistency": jnp.nan, "meta": jnp.inf}
    assert float(losses.combine_losses(nan_terms, off)) == 1.5
    assert float(losses.combine_losses({"reasoning": 1.5}, cfg)) == 1.5
    with pytest.raises(ValueError, match="unknown loss term"):
        losses.combine_losses({"explanations": 1.0}, cfg)


@pytest.mark.parametrize("field,value", [("lambda_explanation", -1.0), ("lambda_meta", float("nan")),
                                         ("lambda_consistency", float("inf"))])
def test_loss_config_rejects_bad_weights(field, value):
    with pytest.raises(ValueError, match=f"LossConfig.{field}"):
        LossConfig(**{field: value})
