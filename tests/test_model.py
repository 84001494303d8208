"""The functional core: parity with a numpy reference, edits, tracing, causality, spans, transforms."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.trace import edit_shapes
from tests import reference
from tests.conftest import make_tokens, perturbed_params


def _jit_forward(**static):
    return jax.jit(functools.partial(sj.forward, **static), static_argnames=("cfg",))


def _identity_edits(cfg, b, t):
    shapes = edit_shapes(cfg, b, t, t)
    return sj.Edits(head_mask=jnp.ones(shapes["head_mask"]), head_delta=jnp.zeros(shapes["head_delta"]),
                    edge_mask=jnp.ones(shapes["edge_mask"], bool), attn_where=jnp.zeros(shapes["attn_where"], bool),
                    attn_value=jnp.ones(shapes["attn_value"]), logit_scale=jnp.ones(shapes["logit_scale"]),
                    prob_scale=jnp.ones(shapes["prob_scale"]),
                    residual_delta=jnp.zeros(shapes["residual_delta"]))


def test_matches_numpy_reference(cfg, params, tokens):
    logits = sj.forward(params, tokens, cfg).logits
    for row in range(tokens.shape[0]):
        ref = reference.forward(cfg, params, np.asarray(tokens[row]))
        chex.assert_trees_all_close(logits[row], ref.astype(np.float32), atol=2e-5, rtol=1e-5)


def test_matches_reference_with_tied_embeddings_and_no_gate():
    cfg = sj.configs.get("test", tie_embeddings=True, reasoning_gate=False)
    params = perturbed_params(cfg, seed=3)
    tokens = make_tokens(cfg, (1, 9), seed=4)
    ref = reference.forward(cfg, params, np.asarray(tokens[0]))
    chex.assert_trees_all_close(sj.forward(params, tokens, cfg).logits[0], ref.astype(np.float32), atol=2e-5)


@pytest.mark.parametrize("use_jit", [False, True])
def test_null_edits_are_bitwise_identical(cfg, params, tokens, use_jit):
    fwd = _jit_forward() if use_jit else sj.forward
    plain = fwd(params, tokens, cfg=cfg).logits
    empty = fwd(params, tokens, cfg=cfg, edits=sj.Edits()).logits
    identity = fwd(params, tokens, cfg=cfg, edits=_identity_edits(cfg, *tokens.shape)).logits
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(empty))
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(np.asarray(plain), np.asarray(identity))
    else:  # XLA:GPU fuses the identity multiplies into other kernels, which may round differently (3.6e-7 seen)
        chex.assert_trees_all_close(plain, identity, atol=1e-6, rtol=0)


def test_recording_does_not_change_outputs(cfg, params, tokens):
    plain = sj.forward(params, tokens, cfg)
    traced = sj.forward(params, tokens, cfg, record="all")
    np.testing.assert_array_equal(np.asarray(plain.logits), np.asarray(traced.logits))
    np.testing.assert_array_equal(np.asarray(plain.meta), np.asarray(traced.meta))
    assert all(getattr(plain.trace, f) is None for f in ("attn", "value_norms", "head_out", "gate", "residual"))


def test_trace_shapes_and_consistency(cfg, params, tokens):
    b, t = tokens.shape
    trace = sj.forward(params, tokens, cfg, record="all").trace
    l, h, d = cfg.n_layers, cfg.n_heads, cfg.d_model
    chex.assert_shape(trace.attn, (l, b, h, t, t))
    chex.assert_shape(trace.value_norms, (l, b, h, t, t))
    chex.assert_shape(trace.head_out, (l, b, t, h, d))
    chex.assert_shape(trace.gate, (l, b, t))
    chex.assert_shape(trace.residual, (l, b, t, d))
    chex.assert_trees_all_close(trace.attn.sum(-1), jnp.ones((l, b, h, t)), atol=1e-6)
    # Residual bookkeeping: layer 0 sees the embedding, and each block adds its attention heads' sum.
    embed = params["embed"][tokens]
    np.testing.assert_array_equal(np.asarray(trace.residual[0]), np.asarray(embed))
    assert np.all((np.asarray(trace.gate) > 0) & (np.asarray(trace.gate) < 1))


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


def test_causality_through_gradients(cfg, params, tokens):
    b, t = tokens.shape
    delta = jnp.zeros(edit_shapes(cfg, b, t, t)["residual_delta"])

    def logits_at(delta, pos):
        return sj.forward(params, tokens, cfg, edits=sj.Edits(residual_delta=delta)).logits[:, pos].sum()

    for pos in (0, 4, t - 2):
        grad = jax.grad(logits_at)(delta, pos)[0]  # gradient w.r.t. the embedding stream [B, T, D]
        np.testing.assert_array_equal(np.asarray(grad[:, pos + 1:]), 0.0)
        assert np.abs(np.asarray(grad[:, pos])).max() > 0


def test_each_head_group_attends_only_inside_its_span(cfg, params, tokens):
    attn = np.asarray(sj.forward(params, tokens, cfg, record="attn").trace.attn)  # [L, B, H, T, T]
    _, b, h, t, _ = attn.shape
    q, k = np.arange(t)[:, None], np.arange(t)[None, :]
    for head in range(h):
        group = cfg.head_groups[head]
        span = cfg.group_spans[group]
        for row in range(b):
            boundary = np.isin(np.asarray(tokens[row]), cfg.boundary_token_ids)[None, :]
            inside = (k <= q) if span is None else (k <= q) & (q - k < span)
            if group == 2:
                inside = inside | ((k <= q) & boundary)
            np.testing.assert_array_equal(attn[:, row, head][:, ~inside], 0.0)
            assert (attn[:, row, head][:, inside] > 0).all()
    # The meta heads' boundary exception is live: row 0 has a boundary at 2, out of span for query 10.
    meta = cfg.n_heads - 1
    assert (attn[:, 0, meta, 10, 2] > 0).all() and (attn[:, 0, meta, 10, 3] == 0).all()


def test_residual_delta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        cfg = sj.configs.get("test", dtype="float64", param_dtype="float64")
        params = perturbed_params(cfg, seed=5)
        tokens = make_tokens(cfg, (2, 8), seed=6)
        shape = edit_shapes(cfg, 2, 8, 8)["residual_delta"]
        readout = jax.random.normal(jax.random.key(8), (2, 8, cfg.vocab_size), jnp.float64)

        def loss(delta):
            logits = sj.forward(params, tokens, cfg, edits=sj.Edits(residual_delta=delta)).logits
            return jnp.sum(jax.nn.log_softmax(logits) * readout)

        zero = jnp.zeros(shape, jnp.float64)
        grad = jax.grad(loss)(zero)
        assert grad.dtype == jnp.float64
        for seed in range(3):
            direction = jax.random.normal(jax.random.key(100 + seed), shape, jnp.float64)
            direction = direction / jnp.linalg.norm(direction)  # a step of eps in norm: truncation ~eps^2
            eps = 1e-5
            fd = (loss(eps * direction) - loss(-eps * direction)) / (2 * eps)
            np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=1e-6)
        # Perturbing one hidden state (layer 1, row 0, position 3) moves the loss as that gradient says.
        one_hot = jnp.zeros(shape).at[1, 0, 3].set(jax.random.normal(jax.random.key(9), (cfg.d_model,)))
        one_hot = one_hot / jnp.linalg.norm(one_hot)
        fd = (loss(1e-5 * one_hot) - loss(-1e-5 * one_hot)) / 2e-5
        np.testing.assert_allclose(float(jnp.vdot(grad[1, 0, 3], one_hot[1, 0, 3])), float(fd), rtol=1e-6)


@pytest.mark.parametrize("x64", [False, True])
def test_jit_vmap_grad_compose(cfg, params, tokens, x64):
    with jax.enable_x64(x64):
        eager = sj.forward(params, tokens, cfg).logits
        assert eager.dtype == jnp.float32
        jitted = _jit_forward(record="attn")(params, tokens, cfg=cfg)
        chex.assert_trees_all_close(jitted.logits, eager, atol=1e-6)
        stacked = jnp.stack([tokens, tokens[::-1]])  # [N, B, T]
        batched = jax.vmap(lambda tk: sj.forward(params, tk, cfg).logits)(stacked)
        chex.assert_trees_all_close(batched[0], eager, atol=1e-6)
        chex.assert_trees_all_close(batched[1], eager[::-1], atol=1e-6)

        def loss(p):
            logits = sj.forward(p, tokens, cfg).logits
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))

        grads = jax.grad(loss)(params)
        grads_jit = jax.jit(jax.grad(loss))(params)
        chex.assert_trees_all_close(grads, grads_jit, atol=1e-6)
        chex.assert_tree_all_finite(grads)
        assert float(jnp.abs(grads["layers"]["attn"]["q"]["kernel"]).max()) > 0


def test_padding_mask_reproduces_unpadded_rows(cfg, params, tokens):
    row = tokens[0, :8]
    padded = jnp.concatenate([jnp.full((3,), cfg.pad_id, row.dtype), row])[None]
    mask = jnp.arange(11)[None] >= 3
    alone = sj.forward(params, row[None], cfg).logits[0]
    with_pad = sj.forward(params, padded, cfg, mask=mask).logits[0, 3:]
    chex.assert_trees_all_close(with_pad, alone, atol=1e-5)


def test_meta_head_output(cfg, params, tokens):
    out = sj.forward(params, tokens, cfg)
    chex.assert_shape(out.meta, tokens.shape)
    chex.assert_tree_all_finite(out.meta)
    # It reads the meta-cognitive heads: ablating them changes it, ablating a reasoning head elsewhere too.
    mask = jnp.ones((cfg.n_layers, 1, cfg.n_heads)).at[:, :, list(cfg.meta_heads)].set(0.0)
    ablated = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask)).meta
    assert not np.allclose(np.asarray(ablated), np.asarray(out.meta))
    off = sj.configs.get("test", meta_head=False)
    assert sj.forward(sj.init_params(off, jax.random.key(0)), tokens, off).meta is None


class TestBadInput:

    def test_wrong_shaped_edit_names_the_field(self, cfg, params, tokens):
        with pytest.raises(ValueError, match=r"Edits\.head_mask has shape \(2, 3\)"):
            sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=jnp.ones((2, 3))))
        with pytest.raises(ValueError, match=r"Edits\.residual_delta"):
            sj.forward(params, tokens, cfg, edits=sj.Edits(residual_delta=jnp.zeros((2, 2, 12, 7))))
        with pytest.raises(ValueError, match="attn_where and Edits.attn_value must be set together"):
            sj.forward(params, tokens, cfg, edits=sj.Edits(attn_where=jnp.zeros((2, 2, 4, 12, 12), bool)))

    def test_out_of_vocabulary_tokens(self, cfg, params, tokens):
        bad = tokens.at[1, 4].set(cfg.vocab_size)
        with pytest.raises(ValueError, match=r"token id 64 at \[batch 1, position 4\] is outside the vocabulary"):
            sj.forward(params, bad, cfg)
        with pytest.raises(ValueError, match="token id -1"):
            sj.forward(params, tokens.at[0, 0].set(-1), cfg)
        # Under jit the values are unknown: the bad position becomes NaN, never a clipped valid id.
        logits = _jit_forward()(params, bad, cfg=cfg).logits
        assert np.isnan(np.asarray(logits[1, 4:])).all()
        assert np.isfinite(np.asarray(logits[0])).all()

    def test_too_long_and_malformed_tokens(self, cfg, params):
        with pytest.raises(ValueError, match="exceeds the context cfg.max_seq_len=32"):
            sj.forward(params, jnp.zeros((1, 33), jnp.int32), cfg)
        with pytest.raises(ValueError, match=r"tokens must be \[batch, seq\]"):
            sj.forward(params, jnp.zeros((5,), jnp.int32), cfg)
        with pytest.raises(ValueError, match="integer ids"):
            sj.forward(params, jnp.zeros((1, 5)), cfg)
        with pytest.raises(ValueError, match="mask has shape"):
            sj.forward(params, jnp.zeros((1, 5), jnp.int32), cfg, mask=jnp.ones((1, 4), bool))

    def test_unknown_record_field(self, cfg, params, tokens):
        with pytest.raises(ValueError, match=r"unknown Trace field\(s\) \['attention'\]"):
            sj.forward(params, tokens, cfg, record=("attention",))
