"""Steps: spans at the <step> markers, the query shift, L_i and H_i against direct computations, bad input."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import special
from sage_jax.interpret import steps as st

S, A, E = special.STEP, special.ANSWER, special.EOS
# positions:      0            1                 2   3   4  5   6   7  8   9  10  11 12  13
LAYOUT = np.array([special.BOS, special.QUESTION, 10, 11, S, 20, 21, 22, S, 30, A, 40, E, 0], np.int32)


def test_find_steps_owns_tokens_between_markers():
    steps = st.find_steps(LAYOUT)
    np.testing.assert_array_equal(steps.starts, [5, 9])
    np.testing.assert_array_equal(steps.ends, [8, 10])
    expected = np.zeros((2, 14), bool)
    expected[0, 5:8] = True
    expected[1, 9:10] = True
    np.testing.assert_array_equal(steps.mask, expected)
    assert steps.mask.dtype == jnp.bool_ and steps.starts.dtype == jnp.int32


def test_queries_are_the_step_shifted_left_and_sources_precede_it():
    steps = st.find_steps(LAYOUT)
    expected = np.zeros((2, 14), bool)
    expected[0, 4:7] = True  # the <step> marker at 4 predicts token 5
    expected[1, 8:9] = True
    np.testing.assert_array_equal(steps.queries, expected)
    np.testing.assert_array_equal(steps.sources[1], np.arange(14) < 9)


def test_pluggable_splitter():
    split_at_22 = lambda tokens: [(2, 6), (7, 10)]  # noqa: E731
    steps = st.find_steps(LAYOUT, splitter=split_at_22)
    np.testing.assert_array_equal(steps.starts, [2, 7])
    np.testing.assert_array_equal(steps.ends, [6, 10])


def test_losses_and_entropies_match_direct_computation():
    logits = jax.random.normal(jax.random.key(0), (14, 50))
    steps = st.find_steps(LAYOUT)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    entropy = -(np.exp(logp) * logp).sum(-1)
    want_loss = [-sum(logp[t - 1, LAYOUT[t]] for t in range(5, 8)), -logp[8, LAYOUT[9]]]
    want_entropy = [entropy[4:7].mean(), entropy[8]]
    chex.assert_trees_all_close(st.step_losses(logits, jnp.asarray(LAYOUT), steps), np.float32(want_loss),
                                atol=1e-5)
    chex.assert_trees_all_close(st.step_entropies(logits, steps), np.float32(want_entropy), atol=1e-5)


def test_one_nll_for_next_token_targets_and_for_a_sequence_own_tokens():
    logits = jax.random.normal(jax.random.key(1), (2, 14, 50), jnp.bfloat16) * 4
    targets = jax.random.randint(jax.random.key(2), (2, 14), 0, 50)
    nll = st.token_nll(logits, targets)
    assert nll.shape == (2, 14) and nll.dtype == jnp.float32
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
    want = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    chex.assert_trees_all_close(nll, np.float32(want), atol=1e-5)
    tokens = jnp.asarray(LAYOUT)
    aligned = st.sequence_nll(logits[0], tokens)
    np.testing.assert_array_equal(aligned[0], 0.0)
    np.testing.assert_array_equal(aligned[1:], st.token_nll(logits[0, :-1], tokens[1:]))


def test_stack_steps_pads_with_empty_steps_of_zero_entropy():
    one = st.find_steps(LAYOUT)
    single = st.from_spans([(5, 8)], 14)
    batch = st.stack_steps([one, single])
    assert batch.mask.shape == (2, 2, 14)
    assert not np.asarray(batch.mask[1, 1]).any()
    logits = jax.random.normal(jax.random.key(1), (14, 50))
    entropies = jax.vmap(st.step_entropies, in_axes=(None, 0))(logits, batch)
    assert float(entropies[1, 1]) == 0.0
    chex.assert_trees_all_close(entropies[1, 0], entropies[0, 0])


@pytest.mark.parametrize("spans, message", [
    ([(5, 20)], "outside the sequence"),
    ([(-1, 3)], "outside the sequence"),
    ([(5, 5)], "or is empty"),
    ([(0, 3)], "starts at token 0"),
    ([(5, 8), (7, 9)], "overlaps step 0"),
    ([], "rationale is empty"),
])
def test_bad_spans_are_rejected(spans, message):
    with pytest.raises(ValueError, match=message):
        st.from_spans(spans, 14)


def test_no_marker_means_empty_rationale():
    with pytest.raises(ValueError, match="empty rationale"):
        st.find_steps(np.array([special.BOS, special.QUESTION, 10, A, 40, E]))


def test_empty_step_is_rejected_with_its_position():
    with pytest.raises(ValueError, match="marker at position 2 is followed directly by <answer> at position 3"):
        st.find_steps(np.array([special.BOS, 10, S, A, 40, E]))


def test_marker_spans_can_skip_empty_steps():
    tokens = np.array([special.BOS, 10, S, S, 11, S, E])
    assert st.marker_spans(tokens, skip_empty=True) == [(4, 5)]
    with pytest.raises(ValueError, match="marker at position 2 is followed directly by <step> at position 3"):
        st.marker_spans(tokens)


def test_find_steps_wants_one_sequence():
    with pytest.raises(ValueError, match=r"\[T\] tokens"):
        st.find_steps(LAYOUT[None])
