"""Activation-patching sweeps: the engine equals a loop of forwards, and patching finds the one dependency
of a model built by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.interpret import patching as pa
from tests.conftest import make_tokens

forward = jax.jit(sj.forward, static_argnames=("cfg", "record"))  # eager forwards retrace the scan

MARKER, MARKER_POS, T = 10, 3, 16
STEPS = ((7, 10), (11, 15))  # [start, end) of each step
ANSWER_POS = 15


def copy_model(cfg):
    """Parameters under which every prediction after `MARKER_POS` rests on the marker token alone.

    Only head 2 of layer 0 (a memory head: full context) is live. Every token embeds a constant in dim 0 (read
    by the query) and a random identity in dims 8..15 (read by the value); only the marker also has dim 1 (read
    by the key), placed in the lowest rotary frequency so position barely matters. The head attends from every
    later query to the marker with probability ~1 and writes its value to dims 16..23, the only dims the
    unembedding reads. Norm scales are 1; every other weight (other heads, FFNs, layer 1, meta head) is 0.
    """
    params = jax.tree_util.tree_map(jnp.zeros_like, sj.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    d, low = cfg.head_dim, cfg.head_dim // 2 - 1
    embed = np.zeros((cfg.vocab_size, cfg.d_model), np.float32)
    embed[:, 0] = 1.0
    embed[:, 8:16] = rng.normal(size=(cfg.vocab_size, 8))
    embed[MARKER, 1] = 3.0
    q = np.zeros((cfg.n_layers, cfg.d_model, cfg.n_heads, d), np.float32)
    k = np.zeros((cfg.n_layers, cfg.d_model, cfg.n_kv_heads, d), np.float32)
    v = np.zeros((cfg.n_layers, cfg.d_model, cfg.n_kv_heads, d), np.float32)
    o = np.zeros((cfg.n_layers, cfg.n_heads, d, cfg.d_model), np.float32)
    q[0, 0, 2, low] = 3.0
    k[0, 1, 1, low] = 3.0  # head 2 reads key/value head 2 // (n_heads // n_kv_heads) = 1
    v[0, 8:16, 1, :] = np.eye(8)
    o[0, 2, :, 16:24] = 3.0 * np.eye(8)
    unembed = np.zeros((cfg.d_model, cfg.vocab_size), np.float32)
    unembed[16:24] = rng.normal(size=(8, cfg.vocab_size))
    layers = dict(params["layers"])
    layers["attn"] = dict(q={"kernel": jnp.asarray(q)}, k={"kernel": jnp.asarray(k)}, v={"kernel": jnp.asarray(v)},
                          o=jnp.asarray(o))
    for norm in ("attn_norm", "ffn_norm"):
        layers[norm] = {"scale": jnp.ones_like(layers[norm]["scale"])}
    return dict(params, embed=jnp.asarray(embed), layers=layers, unembed={"kernel": jnp.asarray(unembed)},
                final_norm={"scale": jnp.ones_like(params["final_norm"]["scale"])})


def copy_problem(cfg, params):
    """`tokens [T]`, `step_mask [2, T]`, `answer_mask [T]`: steps and answer repeat the token the marker predicts."""
    tokens = jnp.asarray(np.random.default_rng(1).integers(11, cfg.vocab_size, T), jnp.int32).at[MARKER_POS].set(MARKER)
    predicted = int(forward(params, tokens[None], cfg).logits[0, MARKER_POS + 1].argmax())
    assert predicted > MARKER  # not a special token, not the marker: the construction is what the tests assume
    step_mask = jnp.zeros((len(STEPS), T), bool)
    for i, (start, end) in enumerate(STEPS):
        tokens = tokens.at[start:end].set(predicted)
        step_mask = step_mask.at[i, start:end].set(True)
    tokens = tokens.at[ANSWER_POS].set(predicted)
    return tokens, step_mask, jnp.arange(T) == ANSWER_POS


@pytest.fixture(scope="module")
def hand(cfg):
    params = copy_model(cfg)
    return (params,) + copy_problem(cfg, params)


def test_sweep_equals_a_loop_of_forwards(cfg, params):
    tokens = make_tokens(cfg, (T,), seed=2)
    step_mask = jnp.zeros((2, T), bool).at[0, 4:8].set(True).at[1, 9:14].set(True)
    answer = jnp.arange(T) >= 14
    metric = pa.log_prob_metric(tokens, step_mask, answer)
    scales = jnp.array([0.0, 0.5, 2.0])
    make = lambda s: sj.Edits(prob_scale=jnp.full((cfg.n_layers, 1, cfg.n_heads, T, T), s).at[:, :, :, :, 0].set(1.0))
    swept = jax.jit(lambda p: pa.sweep(p, cfg, tokens, make, scales, metric))(params)
    chunked = jax.jit(lambda p: pa.sweep(p, cfg, tokens, make, scales, metric, batch_size=2))(params)
    for i, s in enumerate(scales):
        logits = forward(params, tokens[None], cfg, edits=make(s)).logits[0]
        per_token = jax.nn.log_softmax(logits[:-1], -1)[jnp.arange(T - 1), tokens[1:]]
        chex.assert_trees_all_close(swept.step[i], step_mask[:, 1:] @ per_token, atol=1e-4)
        chex.assert_trees_all_close(swept.answer[i], answer[1:] @ per_token, atol=1e-4)
    chex.assert_trees_all_close(chunked, swept, atol=1e-5)


def test_residual_patching_singles_out_the_marker(cfg, hand):
    params, tokens, step_mask, answer = hand
    source = tokens.at[MARKER_POS].set(MARKER + 1)  # the corrupted run: no marker
    result = pa.residual_patching(params, cfg, tokens, source, step_mask, answer)
    assert result.effect.step.shape == (cfg.n_layers, T, 2) and result.effect.answer.shape == (cfg.n_layers, T)
    effect = np.array(jnp.abs(result.effect.step))  # [L, T, steps]
    assert effect[0, MARKER_POS].min() > 5.0  # losing the marker costs every step dearly
    effect[0, MARKER_POS] = 0.0
    # Nothing else before the steps matters: not at the embeddings (layer 0), and at no layer before the position
    # that predicts a step's first token (which, after layer 0, holds the copied marker: position start - 1).
    assert effect[0, : STEPS[0][0]].max() < 1e-5
    assert effect[:, : STEPS[0][0] - 1].max() < 1e-5
    assert effect[1, STEPS[0][0] - 1, 0] > 5.0
    assert abs(float(result.effect.answer[0, MARKER_POS])) > 1.0


def test_head_patching_singles_out_the_copying_head(cfg, hand):
    params, tokens, step_mask, answer = hand
    zeroed = pa.head_patching(params, cfg, tokens, step_mask, answer)
    effect = np.array(jnp.abs(zeroed.effect.step))
    assert effect[0, 2].min() > 5.0
    effect[0, 2] = 0.0
    assert effect.max() < 1e-5
    same = pa.head_patching(params, cfg, tokens, step_mask, answer, source_tokens=tokens)
    chex.assert_trees_all_close(same.effect, jax.tree_util.tree_map(jnp.zeros_like, same.effect), atol=1e-4)


@pytest.mark.parametrize("patch", ["output", "pattern"])
def test_head_patching_from_the_corrupted_run_singles_out_the_copying_head(cfg, hand, patch):
    params, tokens, step_mask, answer = hand
    source = tokens.at[MARKER_POS].set(MARKER + 1)  # no marker: the copying head reads nothing useful
    result = pa.head_patching(params, cfg, tokens, step_mask, answer, source_tokens=source, patch=patch)
    effect = np.array(jnp.abs(result.effect.step))
    assert effect[0, 2].min() > 5.0
    effect[0, 2] = 0.0
    assert effect.max() < 1e-5


def test_token_log_probs_match_a_direct_computation(cfg, params):
    tokens = make_tokens(cfg, (T,), seed=4)
    logits = forward(params, tokens[None], cfg).logits[0]
    expected = [0.0] + [float(jax.nn.log_softmax(logits[t - 1])[tokens[t]]) for t in range(1, T)]
    chex.assert_trees_all_close(pa.token_log_probs(logits, tokens), jnp.asarray(expected), atol=1e-6)


def test_bad_inputs_are_named(cfg, params):
    tokens = make_tokens(cfg, (T,), seed=4)
    with pytest.raises(ValueError, match="source_tokens has shape"):
        pa.residual_patching(params, cfg, tokens, tokens[:-1], jnp.ones((1, T), bool))
    with pytest.raises(ValueError, match="step_mask has shape"):
        pa.head_patching(params, cfg, tokens, jnp.ones((1, T - 1), bool))
    with pytest.raises(ValueError, match="one sequence"):
        pa.head_patching(params, cfg, tokens[None], jnp.ones((1, T), bool))
    with pytest.raises(ValueError, match="patch='values'"):
        pa.head_patching(params, cfg, tokens, jnp.ones((1, T), bool), source_tokens=tokens, patch="values")
