"""Decision points (Algorithm S1): branching positions, alternatives equal to the top-k of the logits,
the threshold, continuations equal to a direct greedy generation, and bad input."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret import decisions as dc
from sage_jax.interpret import significance as sg
from sage_jax.interpret import steps as st
from tests.interpret.test_significance import PROBLEM


@pytest.fixture(scope="module")
def analysed(cfg, params):
    tokens, steps = jnp.asarray(PROBLEM), layout.find_steps(PROBLEM)
    logits = sj.forward(params, tokens[None], cfg).logits[0]
    return tokens, steps, logits, sg.significance(params, cfg, tokens, steps).score


def test_branches_are_the_highest_entropy_token_with_top_k_of_the_logits(analysed):
    tokens, steps, logits, _ = analysed
    found = dc.branches(logits, tokens, steps, top_k=5)
    entropy = np.asarray(st.token_entropy(logits))
    for i in range(steps.n_steps):
        start, end = int(steps.starts[i]), int(steps.ends[i])
        position = start + int(np.argmax(entropy[start:end]))
        assert int(found.position[i]) == position
        row = np.asarray(logits[position - 1], np.float64)
        order = np.argsort(-row, kind="stable")[:5]
        np.testing.assert_array_equal(found.top_ids[i], order)
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        chex.assert_trees_all_close(found.top_probs[i], probs[order].astype(np.float32), atol=1e-6)
        assert int(found.chosen[i]) == PROBLEM[position]
        chex.assert_trees_all_close(found.confidence[i], np.float32(probs[PROBLEM[position]]), atol=1e-6)
        chex.assert_trees_all_close(found.entropy[i], np.float32(entropy[position]), atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_decision_points_respect_the_threshold(analysed, threshold):
    tokens, steps, logits, score = analysed
    found = dc.decision_points(score, logits, tokens, steps, threshold=threshold)
    want = {(int(i), int(j)) for i, j in np.argwhere(np.asarray(score) > threshold)}
    assert {(i, j) for i, j, _ in found.points} == want
    for d in found.steps:
        assert [s for _, s in d.dependencies] == sorted((s for _, s in d.dependencies), reverse=True)
        assert len(d.alternatives) == 5
    assert found.answer == (50,)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "high"])
def test_threshold_outside_unit_interval_is_rejected(analysed, threshold):
    tokens, steps, logits, score = analysed
    with pytest.raises(ValueError, match="threshold must lie in"):
        dc.decision_points(score, logits, tokens, steps, threshold=threshold)


def test_score_of_the_wrong_shape_is_rejected(analysed):
    tokens, steps, logits, score = analysed
    with pytest.raises(ValueError, match=r"score has shape \(3, 20\)"):
        dc.decision_points(score[:, 1:], logits, tokens, steps)


def test_continuations_equal_direct_greedy_generation(cfg, params, analysed):
    tokens, steps, logits, score = analysed
    cfg_long = cfg.replace(max_seq_len=40)
    found = dc.decision_points(score, logits, tokens, steps, top_k=2)
    found = dc.with_continuations(found, params, cfg_long, tokens, max_new_tokens=6)
    d = found.steps[1]
    for alt in d.alternatives:
        prompt = list(PROBLEM[:d.position]) + [alt.token]
        out = sj.generate(params, cfg_long, [prompt], max_new_tokens=6)
        want = tuple(int(t) for t in np.asarray(out.tokens[0, len(prompt):len(prompt) + int(out.num_generated[0])]))
        assert alt.continuation == want
        span = layout.SAGE.answer_span(prompt + list(want))
        assert alt.answer == (None if span is None else tuple((prompt + list(want))[span[0]:span[1]]))
        assert alt.answer_changed == (alt.answer != (50,))


def test_branches_batch_over_problems_with_vmap(analysed):
    tokens, steps, logits, _ = analysed
    other_logits = jax.random.normal(jax.random.key(3), logits.shape)
    batch = jax.vmap(dc.branches, in_axes=(0, None, None))(jnp.stack([logits, other_logits]), tokens, steps)
    for row, single_logits in enumerate([logits, other_logits]):
        single = dc.branches(single_logits, tokens, steps)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[row], batch), single)
