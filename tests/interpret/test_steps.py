"""Per-step scores: L_i and H_i against direct computations, and empty padding steps scoring 0."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sage_jax import layout
from sage_jax.interpret import steps as st

S, A, E = layout.STEP, layout.ANSWER, layout.EOS
# positions:      0            1                 2   3   4  5   6   7  8   9  10  11 12  13
LAYOUT = np.array([layout.BOS, layout.QUESTION, 10, 11, S, 20, 21, 22, S, 30, A, 40, E, 0], np.int32)


def test_losses_and_entropies_match_direct_computation():
    logits = jax.random.normal(jax.random.key(0), (14, 50))
    steps = layout.find_steps(LAYOUT)
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
    # The same NLL to float32 rounding: sequence_nll reads it off log_softmax (its docstring says why).
    chex.assert_trees_all_close(aligned[1:], st.token_nll(logits[0, :-1], tokens[1:]), atol=1e-5)


def test_stack_steps_pads_with_empty_steps_of_zero_entropy():
    one = layout.find_steps(LAYOUT)
    single = layout.from_spans([(5, 8)], 14)
    batch = layout.stack_steps([one, single])
    assert batch.mask.shape == (2, 2, 14)
    assert not np.asarray(batch.mask[1, 1]).any()
    logits = jax.random.normal(jax.random.key(1), (14, 50))
    entropies = jax.vmap(st.step_entropies, in_axes=(None, 0))(logits, batch)
    assert float(entropies[1, 1]) == 0.0
    chex.assert_trees_all_close(entropies[1, 0], entropies[0, 0])
