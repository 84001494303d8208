"""`Trace.attn_rows`: the attention of weighted sets of queries, reduced inside each layer (issue 16).

It must equal `query_rows @ attn` head by head, edits included, change nothing else a forward computes, survive
rematerialisation, and be refused clearly where it has no `query_rows` (a bad shape, `generate`)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.trace import edit_shapes


def _rows(tokens, n_rows=3, seed=0):
    """`[B, R, T]` non-negative query weights."""
    b, t = tokens.shape
    return jax.random.uniform(jax.random.key(seed), (b, n_rows, t))


def test_attn_rows_are_query_rows_times_attn(cfg, params, tokens):
    rows = _rows(tokens)
    out = sj.forward(params, tokens, cfg, record=("attn", "attn_rows"), query_rows=rows)
    b, t = tokens.shape
    chex.assert_shape(out.trace.attn_rows, (cfg.n_layers, b, cfg.n_heads, rows.shape[1], t))
    want = jnp.einsum("brt,lbhts->lbhrs", rows, out.trace.attn)
    chex.assert_trees_all_close(out.trace.attn_rows, want, atol=1e-6, rtol=1e-6)


def test_attn_rows_follow_the_edits(cfg, params, tokens):
    """After all edits, like `attn`: an edge cut and a scaled probability show in the rows."""
    b, t = tokens.shape
    shape = edit_shapes(cfg, b, t, t)["edge_mask"]
    edits = sj.Edits(edge_mask=jnp.ones(shape, bool).at[:, :, 0, :, 0].set(False),
                     prob_scale=jnp.ones(shape).at[1, :, 2].set(0.5))
    rows = _rows(tokens)
    out = sj.forward(params, tokens, cfg, edits=edits, record=("attn", "attn_rows"), query_rows=rows)
    chex.assert_trees_all_close(out.trace.attn_rows, jnp.einsum("brt,lbhts->lbhrs", rows, out.trace.attn),
                                atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.trace.attn_rows[:, :, 0, :, 0]), 0.0)


def test_recording_attn_rows_changes_nothing_else(cfg, params, tokens):
    plain = sj.forward(params, tokens, cfg, record="all")
    rows = sj.forward(params, tokens, cfg, record=("attn_rows",), query_rows=_rows(tokens))
    np.testing.assert_array_equal(np.asarray(plain.logits), np.asarray(rows.logits))
    np.testing.assert_array_equal(np.asarray(plain.hidden), np.asarray(rows.hidden))
    assert plain.trace.attn_rows is None and rows.trace.attn is None


def test_record_all_leaves_out_attn_rows():
    """`attn_rows` needs an input, so "all" (the fields the tokens alone determine) does not include it."""
    record = sj.Record.of("all")
    assert not record.attn_rows and record.attn and record.residual


def test_attn_rows_under_remat_and_jit(cfg, params, tokens):
    rows = _rows(tokens)
    fwd = jax.jit(lambda p, t, r, c: sj.forward(p, t, c, record="attn_rows", query_rows=r).trace.attn_rows,
                  static_argnums=3)
    plain, remat = fwd(params, tokens, rows, cfg), fwd(params, tokens, rows, cfg.replace(remat=True))
    chex.assert_trees_all_close(plain, remat, atol=1e-6, rtol=1e-6)


class TestRefused:

    def test_attn_rows_without_query_rows(self, cfg, params, tokens):
        with pytest.raises(ValueError, match="attn_rows needs query_rows"):
            sj.forward(params, tokens, cfg, record="attn_rows")

    def test_query_rows_without_attn_rows(self, cfg, params, tokens):
        with pytest.raises(ValueError, match="add 'attn_rows' to record"):
            sj.forward(params, tokens, cfg, record="attn", query_rows=_rows(tokens))

    @pytest.mark.parametrize("shape", [(2, 12), (1, 3, 12), (2, 3, 11)])
    def test_wrong_shape_names_query_rows(self, cfg, params, tokens, shape):
        with pytest.raises(ValueError, match=r"query_rows has shape .* expected \[batch=2, rows, seq=12\]"):
            sj.forward(params, tokens, cfg, record="attn_rows", query_rows=jnp.ones(shape))

    def test_integer_query_rows(self, cfg, params, tokens):
        with pytest.raises(ValueError, match="query_rows must be float"):
            sj.forward(params, tokens, cfg, record="attn_rows", query_rows=jnp.ones((2, 3, 12), jnp.int32))

    def test_generate_cannot_record_attn_rows(self, cfg, params, tokens):
        with pytest.raises(ValueError, match="generate cannot record attn_rows"):
            sj.generate(params, cfg, tokens, max_new_tokens=2, record="attn_rows")
