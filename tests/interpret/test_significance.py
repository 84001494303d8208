"""Exact significance: the batched vjp against a loop of jax.grad, the factors, rollout by hand, batching,
and a model built by hand so that every step rests on exactly one earlier token."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret import significance as sg
from sage_jax.interpret import steps as st
from sage_jax.interpret.interventions import merge_edits
from tests.conftest import perturbed_params

S, A, E = layout.STEP, layout.ANSWER, layout.EOS
PROBLEM = np.array([layout.BOS, layout.QUESTION, 10, 11, 12, 13, S, 20, 21, 22, S, 30, 31, S, 40, 41, 42, 43,
                    A, 50, E], np.int32)


@pytest.fixture(scope="module")
def problem():
    return jnp.asarray(PROBLEM), layout.find_steps(PROBLEM)


def loop_of_grads(params, cfg, tokens, steps, layer, edits=None):
    """`||dL_i/dh_j||` by one jax.grad per step: the reference the batched vjp must equal."""
    def loss(delta, i):
        probe = sg.probe_edits(cfg, layer, delta)
        out = sj.forward(params, tokens[None], cfg, edits=probe if edits is None else merge_edits(probe, edits))
        return st.step_losses(out.logits[0], tokens, steps)[i]

    grad = jax.jit(jax.grad(loss))  # compiled once; `i` is traced
    zero = jnp.zeros((tokens.shape[0], cfg.d_model))
    return jnp.stack([jnp.linalg.norm(grad(zero, i), axis=-1) for i in range(steps.n_steps)])


@pytest.mark.parametrize("layer", [0, 1])
def test_batched_vjp_equals_loop_of_grad(cfg, params, problem, layer):
    tokens, steps = problem
    got = sg.significance(params, cfg, tokens, steps, layer=layer).grad_norm
    want = loop_of_grads(params, cfg, tokens, steps, layer)
    assert float(jnp.max(want)) > 1e-3
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_significance_under_edits_is_that_of_the_edited_model(cfg, params, problem):
    """`edits=` analyses the intervened model: a loop of jax.grad through the same edit agrees, and the map moves."""
    tokens, steps = problem
    mask = jnp.ones((cfg.n_layers, 1, cfg.n_heads)).at[0, 0, 0].set(0.0).at[1, 0, 1].set(0.0)
    edits = sj.Edits(head_mask=mask)
    edited = sg.significance(params, cfg, tokens, steps, edits=edits)
    chex.assert_trees_all_close(edited.grad_norm, loop_of_grads(params, cfg, tokens, steps, 0, edits),
                                atol=1e-5, rtol=1e-5)
    out = sj.forward(params, tokens[None], cfg, edits=edits)
    chex.assert_trees_all_close(edited.loss, st.step_losses(out.logits[0], tokens, steps), atol=1e-5)
    plain = sg.significance(params, cfg, tokens, steps)
    assert float(jnp.max(jnp.abs(edited.grad_norm - plain.grad_norm))) > 1e-3


def test_factors_multiply_to_the_total(cfg, params, problem):
    tokens, steps = problem
    sig = sg.significance(params, cfg, tokens, steps, weighting="rollout")
    product = sig.weight * sig.grad_norm * sig.entropy[:, None] * steps.sources
    chex.assert_trees_all_close(sig.raw, product, atol=1e-7, rtol=1e-6)
    chex.assert_trees_all_close(sig.score, sig.raw / jnp.max(sig.raw), atol=1e-7)
    assert np.isclose(float(jnp.max(sig.score)), 1.0, atol=1e-6) and float(jnp.min(sig.score)) >= 0.0
    assert not np.asarray(sig.score)[~np.asarray(steps.sources)].any()
    out = sj.forward(params, tokens[None], cfg)
    chex.assert_trees_all_close(sig.loss, st.step_losses(out.logits[0], tokens, steps), atol=1e-5)
    chex.assert_trees_all_close(sig.entropy, st.step_entropies(out.logits[0], steps), atol=1e-6)


def test_attention_weight_is_the_mean_over_queries_heads_and_layers(cfg, params, problem):
    tokens, steps = problem
    attn = np.asarray(sj.forward(params, tokens[None], cfg, record="attn").trace.attn[:, 0])  # [L, H, T, T]
    sig = sg.significance(params, cfg, tokens, steps, heads="reasoning")
    queries = np.asarray(steps.queries)
    for i in range(steps.n_steps):
        rows = attn[:, : cfg.n_reasoning_heads][:, :, queries[i]]  # [L, Hr, q, T]
        chex.assert_trees_all_close(sig.weight[i], rows.mean(axis=(0, 1, 2)), atol=1e-6)


def test_rollout_equals_a_hand_computation_on_two_layers():
    layer0 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    layer1 = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.6, 0.4]])
    attn = np.stack([np.stack([layer0] * 4), np.stack([layer1] * 4)])  # [L=2, H=4, 3, 3]
    attn[1, 0] = np.array([[1.0, 0, 0], [0.1, 0.9, 0], [0.2, 0.2, 0.6]])  # head 0 of layer 1 differs
    mean1 = (3 * layer1 + attn[1, 0]) / 4
    hat0 = 0.5 * layer0 + 0.5 * np.eye(3)  # rows already sum to 1
    hat1 = 0.5 * mean1 + 0.5 * np.eye(3)
    want = hat1 @ hat0
    chex.assert_trees_all_close(sg.rollout(jnp.asarray(attn), (0, 1, 2, 3)), want, atol=1e-6, rtol=0)
    # Entry [2, 0] written out: how much of query 2's input traces back to token 0.
    assert np.isclose(want[2, 0], hat1[2, 0] * hat0[0, 0] + hat1[2, 1] * hat0[1, 0] + hat1[2, 2] * hat0[2, 0])


def test_batched_over_problems_equals_each_problem(cfg, params, problem):
    tokens, steps = problem
    other = np.array(PROBLEM)
    other[2:6] = [15, 16, 17, 18]
    other[14:18] = [44, 45, A, 51]
    other[18:] = [E, 0, 0]
    other_steps = layout.find_steps(other)
    batch = sg.significance_batch(params, cfg, jnp.stack([tokens, jnp.asarray(other)]),
                                  layout.stack_steps([steps, other_steps]))
    first = sg.significance(params, cfg, tokens, steps)
    second = sg.significance(params, cfg, jnp.asarray(other), other_steps)
    chex.assert_trees_all_close(batch.score[0], first.score, atol=1e-6)
    chex.assert_trees_all_close(batch.score[1, : other_steps.n_steps], second.score, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer=2), "layer=2 is outside"),
    (dict(weighting="max"), "weighting='max'"),
    (dict(heads="syntax"), "heads='syntax'"),
    (dict(heads=(9,)), "head indices"),
    (dict(sources="future"), "sources='future'"),
])
def test_bad_options_are_rejected(cfg, params, problem, kwargs, message):
    tokens, steps = problem
    with pytest.raises(ValueError, match=message):
        sg.significance(params, cfg, tokens, steps, **kwargs)


# A model built by hand: every head of its single layer attends to the one token carrying a marker
# direction, so every step reads exactly that token.
KEY_TOKEN = 12
KEY_POSITION = 4


def key_reading_model():
    """One layer, homogeneous spans; all queries share a "bias" direction (dim 0), only KEY_TOKEN has the
    marker direction (dim 1); q and k put them on the slowest rotary pair (dims 3 and 7 of each head, with a
    huge rotary base), so the attention logit to KEY_TOKEN is ~30 above every other key at every distance."""
    cfg = sj.configs.get("test").replace(n_layers=1, reasoning_span=None, meta_span=None, rope_base=1e9)
    params = perturbed_params(cfg, seed=3)
    embed = 0.1 * jax.random.normal(jax.random.key(4), (cfg.vocab_size, cfg.d_model))
    embed = embed.at[:, 0].set(1.0).at[:, 1].set(0.0).at[KEY_TOKEN, 1].set(1.0)
    params["embed"] = embed
    attn = params["layers"]["attn"]
    attn["q"]["kernel"] = jnp.zeros_like(attn["q"]["kernel"]).at[0, 0, :, 3].set(2.0)
    attn["k"]["kernel"] = jnp.zeros_like(attn["k"]["kernel"]).at[0, 1, :, 3].set(2.0)
    return cfg, params


def test_hand_built_dependency_is_singled_out():
    cfg, params = key_reading_model()
    tokens = np.array(PROBLEM)
    assert tokens[KEY_POSITION] == KEY_TOKEN and (tokens == KEY_TOKEN).sum() == 1
    steps = layout.find_steps(tokens)
    sig = sg.significance(params, cfg, jnp.asarray(tokens), steps)
    score = np.asarray(sig.score)
    np.testing.assert_array_equal(score.argmax(axis=1), [KEY_POSITION] * steps.n_steps)
    others = np.delete(score, KEY_POSITION, axis=1)
    assert (others < 1e-3 * score[:, KEY_POSITION:KEY_POSITION + 1]).all()
    # The same model with the key token moved: significance follows it.
    moved = tokens.copy()
    moved[KEY_POSITION], moved[2] = moved[2], moved[KEY_POSITION]
    score = np.asarray(sg.significance(params, cfg, jnp.asarray(moved), layout.find_steps(moved)).score)
    np.testing.assert_array_equal(score.argmax(axis=1), [2] * steps.n_steps)


def test_step_importance_equals_a_loop_and_composes_with_jit_and_vmap():
    spans = layout.SAGE.step_spans(PROBLEM)
    targets = layout.from_spans(spans + [layout.SAGE.answer_span(PROBLEM)], len(PROBLEM)).mask  # steps + answer
    maps = jax.random.uniform(jax.random.key(0), (2,) + targets.shape)
    n = len(spans)
    for score in np.asarray(maps):  # by hand: each later row's share of its context mass that lies on step k
        want = np.zeros(n)
        for row, (start, _) in enumerate(spans + [layout.SAGE.answer_span(PROBLEM)]):
            context = score[row, :start - 1]  # the tokens before the row's first query
            for k, (a, b) in enumerate(spans[:row]):
                want[k] += context[a:b].sum() / context.sum()
        np.testing.assert_allclose(sg.step_importance(jnp.asarray(score), targets, n), want, rtol=1e-5)
    batched = jax.jit(jax.vmap(sg.step_importance, (0, None, None)), static_argnums=2)(maps, targets, n)
    chex.assert_trees_all_close(batched, jnp.stack([sg.step_importance(m, targets, n) for m in maps]), atol=1e-6)
