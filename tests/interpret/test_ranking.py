"""Rank statistics against hand values and scipy: ties to earlier tokens in selections, average ranks in
correlations, and the host and traced top-k selecting the same positions."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from sage_jax.interpret import ranking


def test_top_fraction_rounds_up_and_breaks_ties_towards_earlier_tokens():
    scores = jnp.array([0.1, 0.9, 0.5, 0.5, 0.7, 0.0])
    candidates = jnp.array([True, True, True, True, False, False])
    np.testing.assert_array_equal(ranking.top_fraction(scores, candidates, 0.01), [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ranking.top_fraction(scores, candidates, 0.5), [0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(ranking.top_fraction(scores, candidates, 0.0), [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ranking.top_k(scores, candidates, 10), candidates)


def test_top_k_positions_are_the_top_k_best_first():
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.7, 0.0], np.float32)
    candidates = np.array([True, True, True, True, False, True])
    assert ranking.top_k_positions(scores, candidates, 3) == (1, 2, 3)  # 0.7 is no candidate; tie: earlier first
    assert ranking.top_k_positions(scores, candidates, 10) == (1, 2, 3, 0, 5)  # never a non-candidate
    for k in range(7):
        chosen = np.zeros(6, bool)
        chosen[list(ranking.top_k_positions(scores, candidates, k))] = True
        np.testing.assert_array_equal(chosen, ranking.top_k(jnp.asarray(scores), jnp.asarray(candidates), k))


def test_top_k_overlap_by_hand():
    every = jnp.ones(5, bool)
    a, b = jnp.array([5.0, 4, 3, 2, 1]), jnp.array([5.0, 1, 4, 2, 3])
    assert float(ranking.top_k_overlap(a, b, every, 2)) == 0.5  # {0, 1} against {0, 2}
    assert float(ranking.top_k_overlap(a, b, every, 5)) == 1.0
    two = jnp.array([False, True, False, True, False])  # k' = 2 candidates
    assert float(ranking.top_k_overlap(a, b, two, 3)) == 1.0
    assert float(ranking.top_k_overlap(a, b, jnp.zeros(5, bool), 3)) == 0.0


def test_spearman_by_hand_and_with_ties():
    every = jnp.ones(4, bool)
    assert np.isclose(ranking.spearman(jnp.array([1.0, 2, 3, 4]), jnp.array([1.0, 3, 2, 4]), every), 0.8)
    assert np.isclose(ranking.spearman(jnp.array([1.0, 2, 3]), jnp.array([9.0, 5, 1]), every[:3]), -1.0)
    # Ties take average ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> Pearson of the ranks.
    np.testing.assert_array_equal(ranking.ranks(jnp.array([0.0, 1, 1, 2]), every), [1, 2.5, 2.5, 4])
    centred = np.array([1, 2.5, 2.5, 4]) - 2.5
    want = (centred * (np.arange(1, 5) - 2.5)).sum() / np.sqrt((centred ** 2).sum() * 5.0)
    assert np.isclose(ranking.spearman(jnp.array([0.0, 1, 1, 2]), jnp.arange(4.0), every), want)


def test_spearman_matches_scipy_on_the_selected_positions():
    x = jnp.array([0.3, 0.1, 0.1, 0.8, 0.5, 9.0, 0.2])
    y = jnp.array([1.0, 2.0, 0.5, 0.4, 0.4, -3.0, 0.9])
    where = jnp.array([True, True, True, True, True, False, True])
    expected = scipy.stats.spearmanr(np.asarray(x)[np.asarray(where)], np.asarray(y)[np.asarray(where)]).statistic
    np.testing.assert_allclose(ranking.spearman(x, y, where), expected, rtol=1e-5)
    assert float(ranking.spearman(x, jnp.ones_like(x), where)) == 0.0
    np.testing.assert_array_equal(ranking.ranks(x, where)[5], 0.0)
    rows = jax.vmap(ranking.spearman)(jnp.stack([x, y]), jnp.stack([y, x]), jnp.stack([where, where]))
    np.testing.assert_allclose(rows, expected, rtol=1e-5)
