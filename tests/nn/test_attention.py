"""Attention edits, through the forward pass: each `Edits` field of attention does what `sage_jax.trace` says,
in its documented order (head masks and deltas, edge masks, probability overrides and scales, logit scales),
and broadcasts over batch rows."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

import sage_jax as sj
from sage_jax.trace import edit_shapes
from tests import reference


def test_head_mask_removes_exactly_that_head(cfg, params, tokens):
    layer, head = 0, 1
    b = tokens.shape[0]
    mask = jnp.ones((cfg.n_layers, b, cfg.n_heads)).at[layer, :, head].set(0.0)
    base = sj.forward(params, tokens, cfg, record=("head_out", "residual"))
    cut = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask), record=("head_out", "residual"))
    # Every other head of that layer is untouched, bit for bit; the masked head contributes exactly zero.
    others = [h for h in range(cfg.n_heads) if h != head]
    np.testing.assert_array_equal(np.asarray(base.trace.head_out[layer][:, :, others]),
                                  np.asarray(cut.trace.head_out[layer][:, :, others]))
    np.testing.assert_array_equal(np.asarray(cut.trace.head_out[layer][:, :, head]), 0.0)
    # The block output equals a by-hand block (numpy reference) with that head's contribution removed.
    layer_params = jax.tree_util.tree_map(lambda x: np.asarray(x[layer], np.float64), params["layers"])
    head_weights = np.ones(cfg.n_heads)
    head_weights[head] = 0.0
    for row in range(b):
        x_in = np.asarray(base.trace.residual[layer, row], np.float64)
        by_hand = reference.block(cfg, layer_params, x_in, np.asarray(tokens[row]), head_weights)
        chex.assert_trees_all_close(cut.trace.residual[layer + 1, row], by_hand.astype(np.float32), atol=1e-5)
    # And the edited logits match the reference model with that head removed.
    ref = reference.forward(cfg, params, np.asarray(tokens[0]), head_masks={layer: head_weights})
    chex.assert_trees_all_close(cut.logits[0], ref.astype(np.float32), atol=2e-5)


def test_attention_override_and_prob_scale(cfg, params, tokens):
    b, t = tokens.shape
    shapes = edit_shapes(cfg, b, t, t)
    # Cut the edge from query 6 to key 2 in every head of layer 1 via prob_scale, and via an override.
    scale = jnp.ones(shapes["prob_scale"]).at[1, :, :, 6, 2].set(0.0)
    where = jnp.zeros(shapes["attn_where"], bool).at[1, :, :, 6, 2].set(True)
    value = jnp.zeros(shapes["attn_value"])
    a = sj.forward(params, tokens, cfg, edits=sj.Edits(prob_scale=scale), record="attn")
    c = sj.forward(params, tokens, cfg, edits=sj.Edits(attn_where=where, attn_value=value), record="attn")
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(c.logits))
    np.testing.assert_array_equal(np.asarray(a.trace.attn[1, :, :, 6, 2]), 0.0)
    base = sj.forward(params, tokens, cfg).logits
    # Positions before 6 cannot see the edit; position 6 must.
    np.testing.assert_array_equal(np.asarray(a.logits[:, :6]), np.asarray(base[:, :6]))
    assert not np.allclose(np.asarray(a.logits[:, 6]), np.asarray(base[:, 6]))


def test_edge_mask_cut_equals_the_token_being_absent(cfg, params, tokens):
    b, t = tokens.shape
    gone = 5
    keep = jnp.ones(edit_shapes(cfg, b, t, t)["edge_mask"], bool).at[..., gone].set(False)
    cut = sj.forward(params, tokens, cfg, edits=sj.Edits(edge_mask=keep), record="attn")
    np.testing.assert_array_equal(np.asarray(cut.trace.attn[..., gone]), 0.0)
    chex.assert_trees_all_close(cut.trace.attn.sum(-1), jnp.ones(cut.trace.attn.shape[:-1]), atol=1e-6)
    # The same model with that token masked out as padding (positions kept): every other position agrees.
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.arange(t) != gone, (b, t))
    absent = sj.forward(params, tokens, cfg, mask=mask, positions=positions)
    others = [i for i in range(t) if i != gone]
    chex.assert_trees_all_close(cut.logits[:, others], absent.logits[:, others], atol=1e-5)


def test_edge_mask_row_with_no_key_left_attends_to_nothing(cfg, params, tokens):
    b, t = tokens.shape
    keep = jnp.ones(edit_shapes(cfg, b, t, t)["edge_mask"], bool).at[0, :, :, 4, :].set(False)
    out = sj.forward(params, tokens, cfg, edits=sj.Edits(edge_mask=keep), record="attn")
    np.testing.assert_array_equal(np.asarray(out.trace.attn[0, :, :, 4]), 0.0)
    chex.assert_tree_all_finite(out.logits)


def test_head_delta_replaces_a_head_output_exactly(cfg, params, tokens):
    layer, head = 1, 2
    b, t = tokens.shape
    base = sj.forward(params, tokens, cfg, record="head_out")
    mask = jnp.ones((cfg.n_layers, 1, cfg.n_heads)).at[layer, :, head].set(0.0)
    delta = jnp.zeros(edit_shapes(cfg, b, t, t)["head_delta"]).at[layer, :, :, head].set(
        base.trace.head_out[layer, :, :, head])
    restored = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask, head_delta=delta), record="head_out")
    chex.assert_trees_all_close(restored.logits, base.logits, atol=1e-5)
    chex.assert_trees_all_close(restored.trace.head_out, base.trace.head_out, atol=1e-6)
    # Mean ablation: the head's output replaced by its mean over positions.
    mean = jnp.mean(base.trace.head_out[layer, :, :, head], axis=1, keepdims=True)
    delta = jnp.zeros((cfg.n_layers, b, 1, cfg.n_heads, cfg.d_model)).at[layer, :, :, head].set(mean)
    ablated = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask, head_delta=delta), record="head_out")
    chex.assert_trees_all_close(ablated.trace.head_out[layer, :, :, head],
                                jnp.broadcast_to(mean, (b, t, cfg.d_model)), atol=1e-6)


def test_logit_scale_zero_gives_uniform_attention_within_the_mask(cfg, params, tokens):
    b, t = tokens.shape
    zero = jnp.zeros(edit_shapes(cfg, b, t, t)["logit_scale"])
    trace = sj.forward(params, tokens, cfg, edits=sj.Edits(logit_scale=zero), record="attn").trace
    memory_head = cfg.n_reasoning_heads  # full causal span: uniform over 0..q
    expected = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    chex.assert_trees_all_close(trace.attn[0, 0, memory_head], expected.astype(np.float32), atol=1e-6)


def test_broadcast_edits_apply_to_every_row(cfg, params, tokens):
    mask_b1 = jnp.ones((cfg.n_layers, 1, cfg.n_heads)).at[0, 0, 0].set(0.0)
    mask_full = jnp.broadcast_to(mask_b1, (cfg.n_layers, tokens.shape[0], cfg.n_heads))
    one = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask_b1)).logits
    full = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask_full)).logits
    np.testing.assert_array_equal(np.asarray(one), np.asarray(full))
