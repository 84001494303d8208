"""Amortised analysis by the Inverse Analysis Layer (`sage_jax.interpret.amortised`): shapes and ranges, a
batch equals one problem at a time, gradient-free on the forward model, wrong inputs named, and the analysis
of a recorded generation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.interpret import amortised
from sage_jax.nn import inverse
from tests.conftest import make_tokens

T = 12
STEP_MASK = jnp.zeros((3, T), bool).at[0, 3:6].set(True).at[1, 6:9].set(True).at[2, 9:11].set(True)


@pytest.fixture(scope="module")
def inverse_params(cfg):
    return inverse.init_inverse_params(cfg, jax.random.key(3))


def test_analyse_shapes_ranges_and_causal_zeros(cfg, params, inverse_params):
    tokens = make_tokens(cfg, (T,), seed=1)
    result = amortised.analyse(params, inverse_params, cfg, tokens, STEP_MASK)
    assert result.significance.shape == (3, T) and result.logits.shape == (T, cfg.vocab_size)
    sig = np.asarray(result.significance)
    assert sig.min() >= 0.0 and sig.max() <= 1.0
    for i, last in enumerate([5, 8, 10]):
        np.testing.assert_array_equal(sig[i, last + 1:], 0.0)  # no token of the step can see them
        assert sig[i, : last + 1].min() > 0.0
    chex.assert_trees_all_close(result.forward_logits, sj.forward(params, tokens[None], cfg).logits[0], atol=1e-6)


def test_analyse_batch_equals_one_problem_at_a_time(cfg, params, inverse_params):
    tokens = make_tokens(cfg, (2, T), seed=2)
    steps = jnp.stack([STEP_MASK, STEP_MASK[::-1]])
    batched = amortised.analyse_batch(params, inverse_params, cfg, tokens, steps)
    for b in range(2):
        one = amortised.analyse(params, inverse_params, cfg, tokens[b], steps[b])
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[b], batched), one, atol=1e-5)


def test_no_gradient_reaches_the_forward_model_but_the_ial_trains(cfg, params, inverse_params):
    tokens = make_tokens(cfg, (T,), seed=1)

    def loss(p, ip):
        result = amortised.analyse(p, ip, cfg, tokens, STEP_MASK)
        return result.significance.sum() + jax.nn.logsumexp(result.logits, -1).sum()

    grad_forward, grad_inverse = jax.grad(loss, argnums=(0, 1))(params, inverse_params)
    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grad_forward))
    assert all(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grad_inverse))


def test_wrong_inputs_are_named(cfg, params, inverse_params):
    tokens = make_tokens(cfg, (1, T), seed=1)
    out = sj.forward(params, tokens, cfg, record=("attn",))
    with pytest.raises(ValueError, match="value_norms"):
        inverse.inverse_features(out.hidden, out.trace, STEP_MASK[None])
    other = sj.configs.get("test", n_layers=3)
    with pytest.raises(ValueError, match="n_token_features"):
        amortised.analyse(sj.init_params(other, jax.random.key(0)), inverse_params, other, tokens[0], STEP_MASK,
                          icfg=inverse.InverseConfig.from_sage(cfg))
    with pytest.raises(ValueError, match="step_mask has shape"):
        amortised.analyse(params, inverse_params, cfg, tokens[0], STEP_MASK[:, 1:])


def test_analysis_of_a_recorded_generation_needs_no_second_forward(cfg, params, inverse_params):
    """The IAL on what generation recorded equals `analyse` of the generated sequence (one forward later)."""
    out = sj.generate(params, cfg, [[5, 9, 3, 17, 22, 8]], max_new_tokens=8, eos_id=63,
                      record=("attn", "value_norms"), return_hidden=True)
    step_mask = np.zeros((2, 14), bool)
    step_mask[0, 6:10], step_mask[1, 10:14] = True, True
    recorded = amortised.analyse_recorded(inverse_params, cfg, out.hidden, out.trace, step_mask[None])
    again = amortised.analyse(params, inverse_params, cfg, out.tokens[0], step_mask)
    chex.assert_trees_all_close(recorded.significance[0], again.significance, atol=1e-5)
    chex.assert_trees_all_close(recorded.logits[0], again.logits, atol=1e-4)
