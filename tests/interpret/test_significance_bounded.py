"""`significance(memory="bounded")`: the same Eq. 7 as the full path, in memory that does not grow with the
layers' `[T, T]` attention (issue 16).

Tolerances: both paths compute the same function with the same float32 operations in a different order
(per-step attention rows reduced inside each layer, rematerialised blocks, chunked pullbacks), so they agree to
float32 rounding: 1e-5 on scores and factors."""

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
from sage_jax.model import unembed
from tests.conftest import perturbed_params
from tests.interpret.test_significance import PROBLEM

FIELDS = ("score", "raw", "weight", "grad_norm", "entropy", "loss", "sources")
ATOL = 1e-5


@pytest.fixture(scope="module")
def problem():
    return jnp.asarray(PROBLEM), layout.find_steps(PROBLEM)


def random_chain(cfg, length, n_steps, seed=0):
    """`[length]` random ids and `n_steps` equal steps after an 8-token prompt."""
    tokens = jax.random.randint(jax.random.key(seed), (length,), layout.NUM_SPECIAL, cfg.vocab_size)
    bounds = np.linspace(8, length - 1, n_steps + 1).astype(int)
    return tokens, layout.from_spans([(b + 1, e) for b, e in zip(bounds[:-1], bounds[1:])], length)


def assert_same(bounded, full, atol=ATOL):
    for name in FIELDS:
        chex.assert_trees_all_close(getattr(bounded, name), getattr(full, name), atol=atol, rtol=1e-5,
                                    custom_message=name)


@pytest.mark.parametrize("lanes", [None, 1, 2, 10])
def test_bounded_equals_full_on_the_test_preset(cfg, params, problem, lanes):
    """Three steps: all at once, one at a time, 2 (a remainder chunk of 1), and more than there are (clamped to
    3: the program of all at once, which is also that of exactly 3)."""
    tokens, steps = problem
    full = sg.significance(params, cfg, tokens, steps)
    assert_same(sg.significance(params, cfg, tokens, steps, memory="bounded", lanes=lanes), full)


def test_bounded_equals_full_on_a_small_model():
    """Three layers, grouped-query attention, spans on every group and a probe inside the stack; seven steps,
    so 3 lanes leave a remainder (one lane at a time is the test preset's case)."""
    cfg = sj.configs.get("test").replace(n_layers=3, n_heads=6, n_kv_heads=3, n_reasoning_heads=3,
                                         n_memory_heads=2, n_meta_heads=1, d_model=48, max_seq_len=64)
    params = perturbed_params(cfg, seed=2)
    tokens, steps = random_chain(cfg, 64, 7)
    for layer in (0, 2):
        full = sg.significance(params, cfg, tokens, steps, layer=layer)
        assert_same(sg.significance(params, cfg, tokens, steps, layer=layer, memory="bounded", lanes=3), full)


@pytest.mark.parametrize("heads", ["reasoning", (0, 3)])
def test_head_selection(cfg, params, problem, heads):
    """A group by name and heads by index (all heads, `None`, is every other test's)."""
    tokens, steps = problem
    full = sg.significance(params, cfg, tokens, steps, heads=heads, sources="all")
    assert_same(sg.significance(params, cfg, tokens, steps, heads=heads, sources="all", memory="bounded",
                                lanes=2), full)


def test_under_edits_and_with_a_given_weight(cfg, params, problem):
    tokens, steps = problem
    edits = sj.Edits(head_mask=jnp.ones((cfg.n_layers, 1, cfg.n_heads)).at[0, 0, 1].set(0.0))
    full = sg.significance(params, cfg, tokens, steps, edits=edits)
    assert_same(sg.significance(params, cfg, tokens, steps, edits=edits, memory="bounded", lanes=1), full)
    weight = jax.random.uniform(jax.random.key(1), steps.mask.shape)
    full = sg.significance(params, cfg, tokens, steps, weight=weight)
    assert_same(sg.significance(params, cfg, tokens, steps, weight=weight, memory="bounded"), full)


def test_batched_over_problems(cfg, params, problem):
    tokens, steps = problem
    other = np.array(PROBLEM)
    other[2:6] = [15, 16, 17, 18]
    both = jnp.stack([tokens, jnp.asarray(other)])
    stacked = layout.stack_steps([steps, layout.find_steps(other)])
    full = sg.significance_batch(params, cfg, both, stacked)
    assert_same(sg.significance_batch(params, cfg, both, stacked, memory="bounded", lanes=2), full)


def test_memory_does_not_grow_with_the_layers_attention():
    """Four times the layers: the full path's buffers grow by at least the extra `[L, H, T, T]` record, the bounded
    path's by less than one layer's attention (its per-layer residuals and rows are `[T, D]` and `[H, n, T]`)."""
    def plan(memory, n_layers):
        cfg = sj.configs.get("test").replace(n_layers=n_layers, max_seq_len=256)
        params = jax.eval_shape(sj.init_params, cfg, jax.random.key(0))  # only compiled: shapes suffice
        tokens, steps = random_chain(cfg, 256, 4)
        fn = jax.jit(lambda p, t, s: sg.significance(p, cfg, t, s, memory=memory, lanes=1 if memory == "bounded"
                                                     else None).score)
        stats = fn.lower(params, tokens, steps).compile().memory_analysis()
        return stats.temp_size_in_bytes + stats.output_size_in_bytes

    one_layer_attention = 4 * 4 * 256 * 256  # H * T * T float32
    full_growth = plan("full", 8) - plan("full", 2)
    bounded_growth = plan("bounded", 8) - plan("bounded", 2)
    assert full_growth >= 6 * one_layer_attention
    assert bounded_growth < one_layer_attention


@pytest.mark.parametrize("tie", [False, True])
def test_unembed_is_the_forward_head(cfg, params, tie):
    """The session's perturbed parameters; tied, the same without the unembedding (the embedding serves)."""
    if tie:
        cfg = cfg.replace(tie_embeddings=True)
        params = {name: value for name, value in params.items() if name != "unembed"}
    out = sj.forward(params, jnp.asarray(PROBLEM)[None], cfg)
    chex.assert_trees_all_close(unembed(params, cfg, out.hidden), out.logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("block", [5, 21, 256])
def test_head_rows_equal_the_whole_head(cfg, params, problem, block):
    """Blocks of 5 positions (21 does not divide), one exact block, one padded block: each position's NLL, entropy
    and NLL gradient as the whole `[T, V]` head gives them."""
    tokens, _ = problem
    hidden = sj.forward(params, tokens[None], cfg).hidden[0]
    head = sg.head_rows(params, cfg, hidden, tokens, block)

    def nll(h):
        return st.sequence_nll(unembed(params, cfg, h), tokens)

    logits = unembed(params, cfg, hidden)
    chex.assert_trees_all_close(head.nll, nll(hidden), atol=1e-6)
    chex.assert_trees_all_close(head.entropy, st.token_entropy(logits), atol=1e-6)
    chex.assert_trees_all_close(head.grads, jax.grad(lambda h: nll(h).sum())(hidden), atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(memory="bounded", weighting="rollout"), "weighting='rollout' needs every layer's full"),
    (dict(memory="tiny"), "memory='tiny'"),
    (dict(lanes=2), "lanes=2"),
    (dict(memory="bounded", lanes=0), "lanes=0"),
    (dict(memory="bounded", weighting="max"), "weighting='max'"),
    (dict(memory="bounded", heads="syntax"), "heads='syntax'"),
])
def test_bad_options_are_rejected(cfg, params, problem, kwargs, message):
    tokens, steps = problem
    with pytest.raises(ValueError, match=message):
        sg.significance(params, cfg, tokens, steps, **kwargs)
