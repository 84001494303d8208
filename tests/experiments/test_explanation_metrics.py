"""Explanation metrics on held-out chained sums: shapes and bounds, the true dependencies are what precision
is scored against, padding changes nothing, and one drop and one AOPC equal a direct computation."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.data import ChainSumKnobs, Tokenizer
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.explanations import (encode_true_chains, explanation_metrics, format_summary, map_metrics,
                                            summarise)
from sage_jax.interpret import faithfulness as fa
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from sage_jax.interpret.significance import significance
from sage_jax.interpret.steps import find_steps
from tests.conftest import perturbed_params

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
EXAMPLES = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 3), 2, seed=7).examples
K = 3


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MODEL, seed=3, scale=0.3)  # random weights with effects well above rounding


@pytest.fixture(scope="module")
def metrics(params):
    return explanation_metrics(params, MODEL, TOKENIZER, EXAMPLES, k=K, key=jax.random.key(1), n_random=2)


def test_shapes_bounds_and_padding_rows(metrics):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    n, s, t = encoded.deps.shape
    assert (n, s) == (4, 3) and t == max(len(TOKENIZER.encode_item(ex).tokens) for ex in EXAMPLES)
    np.testing.assert_array_equal(metrics.n_steps, [1, 1, 3, 3])
    np.testing.assert_array_equal(metrics.valid, np.arange(3)[None, :] < np.array([1, 1, 3, 3])[:, None])
    assert metrics.drop_random.shape == (4, 3, 2) and metrics.attribution.shape == (4, 3, t)
    valid = np.asarray(metrics.valid)
    for name in ("precision", "recall", "chance_precision"):
        values = np.asarray(getattr(metrics, name))[valid]
        assert np.all((values >= 0) & (values <= 1)), name
    # Padding rows own no token: nothing is deleted from them and they have no log-probability to lose.
    np.testing.assert_array_equal(np.asarray(metrics.drop_top)[~valid], 0.0)
    np.testing.assert_array_equal(np.asarray(metrics.base)[~valid], 0.0)


def test_a_map_equal_to_the_true_dependencies_scores_precision_one(params):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    deps = encoded.deps
    exact = map_metrics(params, MODEL, encoded, deps.astype(np.float32), k=K, key=jax.random.key(1), n_random=1)
    valid = np.asarray(exact.valid)
    np.testing.assert_array_equal(np.asarray(exact.precision)[valid], 1.0)  # every step has >= 3 dependencies
    np.testing.assert_allclose(np.asarray(exact.recall)[valid], K / deps.sum(-1)[valid], rtol=1e-6)
    anti = map_metrics(params, MODEL, encoded, -deps.astype(np.float32), k=K, key=jax.random.key(1), n_random=1)
    np.testing.assert_array_equal(np.asarray(anti.precision)[valid], 0.0)
    candidates = np.asarray(jax.vmap(fa.context_candidates)(encoded.steps.mask))
    chance = (deps & candidates).sum(-1) / np.maximum(candidates.sum(-1), 1)
    np.testing.assert_allclose(np.asarray(exact.chance_precision)[valid], chance[valid], rtol=1e-6)
    table = summarise(exact, K)
    assert table["all"]["precision_at_k"] == 1.0 and table[1]["problems"] == 2 and table[3]["steps"] == 6
    assert "1.00 (" in format_summary(table)


def test_one_problem_equals_a_direct_unpadded_computation(params, metrics):
    i, step = 2, 1  # the second step of a 3-step chain
    item = TOKENIZER.encode_item(EXAMPLES[i])
    tokens, steps = jnp.asarray(item.tokens), find_steps(item.tokens)
    length = len(item.tokens)
    score = significance(params, MODEL, tokens, steps).score
    chex.assert_trees_all_close(metrics.attribution[i, :, :length], score, atol=1e-6)
    candidates = np.asarray(fa.context_candidates(steps.mask))[step]
    ranked = np.argsort(-np.where(candidates, np.asarray(score[step]), -np.inf), kind="stable")[:K]
    sources = np.zeros(length, bool)
    sources[ranked] = True
    queries = np.asarray(fa.step_queries(steps.mask))[step]
    lp = lambda edits: step_log_probs(sj.forward(params, tokens[None], MODEL, edits=edits).logits[0],  # noqa: E731
                                      tokens, steps.mask).step[step]
    expected = lp(None) - lp(cut_edges(MODEL, edges(jnp.asarray(queries), jnp.asarray(sources))))
    # A difference of ~50-nat log-probabilities in float32: 1e-3 absolute.
    np.testing.assert_allclose(metrics.drop_top[i, step], expected, rtol=1e-4, atol=1e-3)
    direct = fa.faithfulness(params, MODEL, tokens, steps.mask, score)
    np.testing.assert_allclose(metrics.aopc_comprehensiveness[i], direct.aopc_comprehensiveness, rtol=1e-4,
                               atol=1e-3)


def test_examples_without_dependencies_are_rejected(params):
    bare = dataclasses.replace(EXAMPLES[0], dependencies=None)
    with pytest.raises(ValueError, match=r"examples\[1\].*no step dependencies"):
        explanation_metrics(params, MODEL, TOKENIZER, [EXAMPLES[0], bare], k=K, key=jax.random.key(0))
