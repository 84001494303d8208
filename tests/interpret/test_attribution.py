"""The attribution registry: each method against a direct computation; agreement against hand values."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret import attribution as at
from sage_jax.interpret import significance as sg
from sage_jax.interpret import steps as st
from tests.interpret.test_significance import PROBLEM

T = len(PROBLEM)


@pytest.fixture(scope="module")
def problem():
    return jnp.asarray(PROBLEM), layout.find_steps(PROBLEM)


@pytest.fixture(scope="module")
def step_grad(cfg, params, problem):
    """`(x0, i) -> dL_i/dx0`, the gradient of step `i`'s loss with respect to the embedding stream `x0 [T, D]`
    (moved there through a delta at layer 0); jitted once, `i` traced."""
    tokens, steps = problem
    embed = params["embed"][tokens]

    def loss(x0, i):
        edits = sg.probe_edits(cfg, 0, x0 - embed)
        return st.step_losses(sj.forward(params, tokens[None], cfg, edits=edits).logits[0], tokens, steps)[i]
    return jax.jit(jax.grad(loss))


def test_registry_holds_every_method_and_rejects_unknown_names():
    assert {"attention", "rollout", "value_norms", "saliency", "input_x_gradient", "integrated_gradients",
            "sage"} <= set(at.methods())
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        at.attribute("lime", None, None, PROBLEM, None)
    with pytest.raises(ValueError, match="already registered"):
        at.register("sage")(lambda *a: None)


def test_a_new_method_is_a_few_lines(cfg, params, problem):
    @at.register("grad_norm_layer1_for_test")
    def grad_norm_layer1(params, cfg, tokens, steps):
        return jnp.linalg.norm(sg.step_gradients(params, cfg, tokens, steps, layer=1).grads, axis=-1)

    tokens, steps = problem
    # significance's grad_norm at layer 1 is tested equal to a loop of jax.grad in test_significance.
    chex.assert_trees_all_close(at.attribute("grad_norm_layer1_for_test", params, cfg, tokens, steps),
                                sg.significance(params, cfg, tokens, steps, layer=1).grad_norm, atol=1e-5)


def test_attention_rollout_and_value_norms_match_direct_averages(cfg, params, problem):
    tokens, steps = problem
    trace = sj.forward(params, tokens[None], cfg, record=("attn", "value_norms")).trace
    attn, norms = np.asarray(trace.attn[:, 0]), np.asarray(trace.value_norms[:, 0])  # [L, H, T, T]
    queries = np.asarray(steps.queries)
    meta = list(cfg.meta_heads)
    roll = np.asarray(sg.rollout(jnp.asarray(attn), tuple(range(cfg.n_heads))))
    for i in range(steps.n_steps):
        q = queries[i]
        chex.assert_trees_all_close(at.attribute("attention", params, cfg, tokens, steps)[i],
                                    attn[:, :, q].mean(axis=(0, 1, 2)), atol=1e-6)
        chex.assert_trees_all_close(at.attribute("value_norms", params, cfg, tokens, steps, heads="meta")[i],
                                    norms[:, meta][:, :, q].mean(axis=(0, 1, 2)), atol=1e-6)
        chex.assert_trees_all_close(at.attribute("rollout", params, cfg, tokens, steps)[i],
                                    roll[q].mean(axis=0), atol=1e-6)


def test_gradient_methods_match_loops_of_grad(cfg, params, problem, step_grad):
    tokens, steps = problem
    embed = params["embed"][tokens]
    grads = [step_grad(embed, i) for i in range(steps.n_steps)]
    chex.assert_trees_all_close(at.attribute("saliency", params, cfg, tokens, steps),
                                jnp.stack([jnp.linalg.norm(g, axis=-1) for g in grads]), atol=1e-5)
    chex.assert_trees_all_close(at.attribute("input_x_gradient", params, cfg, tokens, steps, signed=True),
                                jnp.stack([jnp.sum(g * embed, axis=-1) for g in grads]), atol=1e-6)


def test_integrated_gradients_matches_a_riemann_loop(cfg, params, problem, step_grad):
    tokens, steps = problem
    embed = params["embed"][tokens]
    n = 8
    want = []
    for i in range(steps.n_steps):
        path = sum(step_grad((k + 0.5) / n * embed, i) for k in range(n)) / n
        want.append(jnp.sum(path * embed, axis=-1))
    got = at.attribute("integrated_gradients", params, cfg, tokens, steps, n_alphas=n, signed=True)
    chex.assert_trees_all_close(got, jnp.stack(want), atol=1e-6)


def test_sage_method_is_eq7(cfg, params, problem):
    tokens, steps = problem
    chex.assert_trees_all_close(at.attribute("sage", params, cfg, tokens, steps, weighting="rollout"),
                                sg.significance(params, cfg, tokens, steps, weighting="rollout").score, atol=1e-6)


def test_agreement_report(problem):
    _, steps = problem
    base = jax.random.uniform(jax.random.key(0), steps.mask.shape)
    report = at.agreement({"a": base, "same": 2 * base, "reversed": -base}, steps, k=3)
    assert report.methods == ("a", "same", "reversed")
    chex.assert_trees_all_close(report.spearman, np.array([[1, 1, -1], [1, 1, -1], [-1, -1, 1.0]]), atol=1e-12)
    assert report.top_k_overlap[0, 1] == 1.0 and report.top_k_overlap[0, 2] == 0.0
    assert "| Spearman | a | same | reversed |" in report.to_markdown()
    with pytest.raises(ValueError, match=r"map 'bad' has shape \(2, 5\)"):
        at.agreement({"bad": np.zeros((2, 5))}, steps)


def test_agreement_leaves_constant_steps_out_of_the_spearman_mean(problem):
    _, steps = problem
    base = np.asarray(jax.random.uniform(jax.random.key(0), steps.mask.shape))
    flat = base.copy()
    flat[0] = 1.0  # step 0 has no ranking: only the other steps count
    report = at.agreement({"a": base, "flat": flat}, steps, k=3)
    assert report.spearman[0, 1] == 1.0
    flat[:] = 1.0
    assert np.isnan(at.agreement({"a": base, "flat": flat}, steps, k=3).spearman[0, 1])
