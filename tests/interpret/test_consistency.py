"""The consistency score: bounded in [0, 1], 1 for identical inputs, and the documented formula."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax.interpret.consistency import consistency, kl_divergence

T, V, N = 6, 11, 3


def random_inputs(seed: int, scale: float = 1.0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return (scale * jax.random.normal(keys[0], (T, V)), scale * jax.random.normal(keys[1], (T, V)),
            jax.random.uniform(keys[2], (N, T)), jax.random.uniform(keys[3], (N, T)))


def test_identical_inputs_score_exactly_one():
    logits, _, amortised_map, _ = random_inputs(0)
    result = consistency(logits, logits, amortised_map, amortised_map)
    assert float(result.score) == 1.0 and float(result.agreement) == 1.0
    np.testing.assert_array_equal(result.kl, 0.0)


@pytest.mark.parametrize("seed,scale", [(1, 0.1), (2, 1.0), (3, 30.0)])
def test_score_is_bounded_and_follows_the_formula(seed, scale):
    fwd, rec, a, e = random_inputs(seed, scale)
    where = jnp.arange(T) % 2 == 0
    map_where = jnp.arange(T)[None, :] < jnp.array([[2], [4], [6]])
    result = consistency(fwd, rec, a, e, where=where, map_where=map_where, kl_weight=0.3)
    assert 0.0 <= float(result.score) <= 1.0
    log_p, log_q = np.asarray(jax.nn.log_softmax(fwd), np.float64), np.asarray(jax.nn.log_softmax(rec), np.float64)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    chex.assert_trees_all_close(result.kl, kl, atol=1e-5, rtol=1e-4)
    fidelity = np.exp(-kl[np.asarray(where)].mean())
    agreement = 1.0 - jnp.abs(a - e)[map_where].mean()
    chex.assert_trees_all_close(result.score, 0.3 * fidelity + 0.7 * agreement, atol=1e-5)


def test_extremes_reach_the_bounds():
    fwd = jnp.zeros((T, V)).at[:, 0].set(100.0)
    rec = jnp.zeros((T, V)).at[:, 1].set(100.0)
    worst = consistency(fwd, rec, jnp.zeros((N, T)), jnp.ones((N, T)))
    assert float(worst.score) < 1e-6
    out_of_range = consistency(fwd, fwd, jnp.full((N, T), 2.0), jnp.full((N, T), -1.0))
    assert float(out_of_range.agreement) == 0.0  # maps are clipped to [0, 1] first


def test_without_maps_the_score_is_the_fidelity():
    fwd, rec, _, _ = random_inputs(4)
    result = consistency(fwd, rec)
    assert float(result.score) == float(result.fidelity) == float(jnp.exp(-kl_divergence(fwd, rec).mean()))
    assert np.isnan(result.agreement)


def test_vmaps_over_problems():
    batches = [random_inputs(s) for s in (5, 6)]
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batches)
    batched = jax.vmap(consistency)(*stacked)
    for b, inputs in enumerate(batches):
        chex.assert_trees_all_close(batched.score[b], consistency(*inputs).score, atol=1e-6)


def test_bad_inputs_are_named():
    fwd, rec, a, e = random_inputs(7)
    with pytest.raises(ValueError, match="kl_weight"):
        consistency(fwd, rec, a, e, kl_weight=1.5)
    with pytest.raises(ValueError, match="both"):
        consistency(fwd, rec, a)
    with pytest.raises(ValueError, match="reconstructed_logits"):
        consistency(fwd, rec[:, :-1])
    with pytest.raises(ValueError, match="map_where"):
        consistency(fwd, rec, a, e, map_where=jnp.ones((N, T - 1), bool))
