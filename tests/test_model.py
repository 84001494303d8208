"""`forward` as a whole: parity with a numpy reference, null edits, tracing, causality, the residual probe's
gradient, transforms, padding and bad input (what each module inside does is tested under `tests/nn/`)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.trace import edit_shapes
from tests import reference
from tests.conftest import jit_forward, make_tokens, params_for


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


def test_matches_reference_with_tied_embeddings_and_no_gate(params):
    """The tied, gateless model's parameters are the `test` preset's without `unembed` and the gate (its tree);
    compiled as one program, as the untied model's parity above is checked op by op."""
    cfg = sj.configs.get("test", tie_embeddings=True, reasoning_gate=False)
    params = params_for(cfg, params)
    tokens = make_tokens(cfg, (1, 9), seed=4)
    ref = reference.forward(cfg, params, np.asarray(tokens[0]))
    chex.assert_trees_all_close(jit_forward(params, tokens, cfg).logits[0], ref.astype(np.float32), atol=2e-5)


@pytest.mark.parametrize("use_jit", [False, True])
def test_null_edits_are_bitwise_identical(cfg, params, tokens, use_jit):
    fwd = jit_forward if use_jit else sj.forward
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


def test_causality_through_gradients(cfg, params, tokens):
    """One compiled gradient serves every position (`pos` is an argument, not a constant of the program)."""
    b, t = tokens.shape
    delta = jnp.zeros(edit_shapes(cfg, b, t, t)["residual_delta"])

    def logits_at(delta, pos):
        return sj.forward(params, tokens, cfg, edits=sj.Edits(residual_delta=delta)).logits[:, pos].sum()

    grad_at = jax.jit(jax.grad(logits_at))
    for pos in (0, 4, t - 2):
        grad = np.asarray(grad_at(delta, pos))[0]  # gradient w.r.t. the embedding stream [B, T, D]
        np.testing.assert_array_equal(grad[:, pos + 1:], 0.0)
        assert np.abs(grad[:, pos]).max() > 0


def test_residual_delta_gradient_matches_finite_differences(params):
    """In float64 (the `test` preset's parameters, cast), against central differences of the loss."""
    with jax.enable_x64(True):
        cfg = sj.configs.get("test", dtype="float64", param_dtype="float64")
        params = params_for(cfg, params)
        tokens = make_tokens(cfg, (2, 8), seed=6)
        shape = edit_shapes(cfg, 2, 8, 8)["residual_delta"]
        readout = jax.random.normal(jax.random.key(8), (2, 8, cfg.vocab_size), jnp.float64)

        @jax.jit
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
    """jit, vmap (compiled: run op by op it adds nothing but 1.5 s of compiling) and grad, eager and compiled,
    against the eager forward, with and without 64-bit mode."""
    with jax.enable_x64(x64):
        eager = sj.forward(params, tokens, cfg).logits
        assert eager.dtype == jnp.float32
        jitted = jit_forward(params, tokens, cfg=cfg, record="attn")
        chex.assert_trees_all_close(jitted.logits, eager, atol=1e-6)
        stacked = jnp.stack([tokens, tokens[::-1]])  # [N, B, T]
        batched = jax.jit(jax.vmap(lambda tk: sj.forward(params, tk, cfg).logits))(stacked)
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
    alone = jit_forward(params, row[None], cfg).logits[0]
    with_pad = jit_forward(params, padded, cfg, mask=mask).logits[0, 3:]
    chex.assert_trees_all_close(with_pad, alone, atol=1e-5)


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
        logits = jit_forward(params, bad, cfg=cfg).logits
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
