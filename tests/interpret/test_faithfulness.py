"""Faithfulness by edge deletion on the hand-built copy model: the true dependency is found, beats random
maps, and the checks that should fail an unfaithful method do."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.interpret import faithfulness as fa
from sage_jax.interpret.patching import step_log_probs
from tests.conftest import perturbed_params
from tests.interpret.test_patching import MARKER_POS, STEPS, T, copy_model, copy_problem


@pytest.fixture(scope="module")
def hand(cfg):
    params = copy_model(cfg)
    tokens, step_mask, _ = copy_problem(cfg, params)
    true_map = jnp.zeros((len(STEPS), T)).at[:, MARKER_POS].set(1.0)
    return params, tokens, step_mask, true_map


def attention_map(params, cfg, tokens, step_mask, edits=None):
    """`[n_steps, T]` mean attention (layers, heads, step queries) from each step to each token."""
    attn = sj.forward(params, tokens[None], cfg, edits=edits, record=("attn",)).trace.attn[:, 0].mean((0, 1))
    queries = fa.step_queries(step_mask)
    weights = queries / queries.sum(-1, keepdims=True)
    return weights @ attn


@pytest.mark.parametrize("renormalise", [True, False])
def test_single_token_deletion_singles_out_the_marker(cfg, hand, renormalise):
    params, tokens, step_mask, _ = hand
    effects = np.array(fa.token_deletion_effects(params, cfg, tokens, step_mask, renormalise=renormalise))
    assert effects.shape == (len(STEPS), T)
    assert effects[:, MARKER_POS].min() > 5.0  # deleting the marker makes every step far less likely
    effects[:, MARKER_POS] = 0.0
    assert np.abs(effects).max() < 1e-5
    np.testing.assert_array_equal(effects[0, STEPS[0][0] - 1:], 0.0)  # not candidates: from the first query on


def test_the_true_map_beats_random_maps(cfg, hand):
    params, tokens, step_mask, true_map = hand
    true = fa.faithfulness(params, cfg, tokens, step_mask, true_map)
    rand = fa.random_baseline(params, cfg, tokens, step_mask, jax.random.key(0), n_maps=4)
    assert true.comprehensiveness.shape == (len(STEPS), len(fa.FRACTIONS))
    # Every fraction deletes at least one token, and the true map deletes the marker first.
    assert true.comprehensiveness.min() > 5.0
    chex.assert_trees_all_close(true.sufficiency, jnp.zeros_like(true.sufficiency), atol=1e-4)
    assert np.all(true.aopc_comprehensiveness > rand.aopc_comprehensiveness + 1.0)
    assert np.all(true.aopc_sufficiency < rand.aopc_sufficiency - 1.0)
    reversed_map = fa.faithfulness(params, cfg, tokens, step_mask, 1.0 - true_map)
    assert np.all(reversed_map.aopc_comprehensiveness < true.aopc_comprehensiveness - 1.0)


def test_deletion_curve_starts_intact_and_drops_with_the_marker(cfg, hand):
    params, tokens, step_mask, true_map = hand
    curve = fa.deletion_curve(params, cfg, tokens, step_mask, true_map, fractions=(0.0, 0.2, 1.0))
    base = step_log_probs(sj.forward(params, tokens[None], cfg).logits[0], tokens, step_mask).step
    chex.assert_trees_all_close(curve[:, 0], base, atol=1e-5)
    assert np.all(curve[:, 1:] < base[:, None] - 5.0)


def test_step_queries_and_candidates_precede_each_step():
    step_mask = jnp.zeros((2, 6), bool).at[0, 2:4].set(True).at[1, 0:2].set(True)
    np.testing.assert_array_equal(fa.step_queries(step_mask), [[0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(fa.context_candidates(step_mask), [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_randomisation_check_flags_a_method_that_ignores_the_model(cfg, hand):
    params, tokens, step_mask, _ = hand
    random_params = perturbed_params(cfg, seed=5)
    blind = lambda p: jnp.broadcast_to(jnp.arange(T, dtype=jnp.float32), step_mask.shape)  # noqa: E731
    np.testing.assert_allclose(fa.randomisation_check(blind, params, random_params, step_mask), 1.0, rtol=1e-6)
    occlusion = lambda p: fa.token_deletion_effects(p, cfg, tokens, step_mask, renormalise=False)  # noqa: E731
    assert np.all(fa.randomisation_check(occlusion, params, random_params, step_mask) < 0.5)


def test_dependency_recovery_precision_and_recall_at_k(hand):
    _, _, step_mask, true_map = hand
    deps = true_map.astype(bool).at[1].set(False)
    precision, recall = fa.dependency_recovery(true_map, deps, step_mask, 1)
    np.testing.assert_allclose(precision, [1.0, 0.0])
    np.testing.assert_allclose(recall[0], 1.0)
    assert np.isnan(recall[1])  # no true dependency: left out of nanmean
    precision, recall = fa.dependency_recovery(true_map, true_map.astype(bool), step_mask, 3)
    np.testing.assert_allclose(precision, [1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(recall, [1.0, 1.0])
    precision, _ = fa.dependency_recovery(-true_map, true_map.astype(bool), step_mask, 1)
    np.testing.assert_allclose(precision, [0.0, 0.0])


def test_the_explanation_moves_with_the_perturbed_attention(cfg, hand):
    params, tokens, step_mask, true_map = hand
    edits, cut = fa.top_token_cut(cfg, true_map, step_mask)
    np.testing.assert_array_equal(cut, true_map.astype(bool))
    analysis = lambda e: attention_map(params, cfg, tokens, step_mask, e)  # noqa: E731
    check = fa.perturbation_check(analysis, edits, step_mask)
    assert np.all(check.before[:, MARKER_POS] > 0.1)
    np.testing.assert_array_equal(check.after[:, MARKER_POS], 0.0)  # the explanation followed the cut
    assert np.all(check.l1 > 0.01)
    frozen = fa.perturbation_check(lambda e: analysis(None), edits, step_mask)  # ignores the model's attention
    np.testing.assert_array_equal(frozen.l1, 0.0)
    np.testing.assert_allclose(frozen.rank_correlation, 1.0, rtol=1e-6)


def test_bad_inputs_are_named(cfg, hand):
    params, tokens, step_mask, true_map = hand
    with pytest.raises(ValueError, match="attribution has shape"):
        fa.faithfulness(params, cfg, tokens, step_mask, true_map[:, :-1])
    with pytest.raises(ValueError, match="step_mask has shape"):
        fa.faithfulness(params, cfg, tokens, step_mask[:, :-1], true_map)
