"""The residual stream's writers sum to the stream (also under head edits), and their direct logit attributions
sum to the logit (and to a logit difference), on the `test` preset and on a tied, gate-free config; each term
against numpy by hand."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.probes import decompose
from sage_jax.quant import as_array
from tests.probes.helpers import TIED, tied

RECORD = ("residual", "head_out", "mlp_out", "resid_post")
forward = jax.jit(sj.forward, static_argnames=("cfg", "record"))
attribute = jax.jit(decompose.direct_logit_attribution, static_argnums=1)


@pytest.fixture(scope="module")
def out(cfg, params, tokens):
    return forward(params, tokens, cfg=cfg, record=RECORD)


def next_tokens(tokens):
    """`[B, T]` each position's next token (the last position predicts the first: any id will do there)."""
    return jnp.roll(tokens, -1, axis=1)


def test_components_sum_to_the_final_stream(out):
    parts = decompose.residual_decomposition(out.trace)
    np.testing.assert_array_equal(parts.embed, out.trace.residual[0])
    np.testing.assert_array_equal(parts.heads, out.trace.head_out)
    np.testing.assert_array_equal(parts.mlps, out.trace.mlp_out)
    chex.assert_trees_all_close(parts.total(), out.trace.resid_post[-1], atol=1e-5, rtol=0)
    # and layer by layer: the stream entering block 1 is the embedding plus block 0's writers
    block0 = parts.embed + parts.heads[0].sum(axis=2) + parts.mlps[0]
    chex.assert_trees_all_close(block0, out.trace.residual[1], atol=1e-5, rtol=0)


def test_components_sum_to_the_stream_under_head_edits(cfg, params, tokens):
    """A head's delta lands in its `head_out`, a masked head writes 0: the sum still holds."""
    b, t = tokens.shape
    mask = jnp.ones((cfg.n_layers, b, cfg.n_heads)).at[1, :, 2].set(0.0)
    delta = 0.1 * jax.random.normal(jax.random.key(3), (cfg.n_layers, b, t, cfg.n_heads, cfg.d_model))
    edited = forward(params, tokens, cfg=cfg, record=RECORD, edits=sj.Edits(head_mask=mask, head_delta=delta))
    parts = decompose.residual_decomposition(edited.trace)
    chex.assert_trees_all_close(parts.total(), edited.trace.resid_post[-1], atol=1e-5, rtol=0)
    chex.assert_trees_all_close(parts.heads[1, :, :, 2], delta[1, :, :, 2], atol=1e-6, rtol=0)


def test_attributions_sum_to_the_logit(cfg, params, tokens, out):
    targets = next_tokens(tokens)
    dla = attribute(params, cfg, out.trace, targets)
    assert dla.embed.shape == (2, 12) and dla.heads.shape == (2, 2, 12, 4) and dla.mlps.shape == (2, 2, 12)
    chex.assert_trees_all_close(dla.total(), decompose.logit_difference(out.logits, targets), atol=1e-4, rtol=0)


def test_attributions_sum_to_the_logit_difference(cfg, params, tokens, out):
    targets, contrast = next_tokens(tokens), jnp.full_like(tokens, 5)
    dla = attribute(params, cfg, out.trace, targets, contrast)
    want = np.take_along_axis(np.asarray(out.logits), np.asarray(targets)[..., None], -1)[..., 0] \
        - np.asarray(out.logits)[..., 5]
    chex.assert_trees_all_close(decompose.logit_difference(out.logits, targets, contrast), want, atol=1e-6, rtol=0)
    chex.assert_trees_all_close(dla.total(), want, atol=1e-4, rtol=0)


def test_each_term_by_hand(cfg, params, tokens, out):
    """`term / rms(final stream) * scale . W_U[:, target]`, in numpy float64."""
    targets = np.asarray(next_tokens(tokens))
    dla = attribute(params, cfg, out.trace, targets)
    final = np.asarray(out.trace.resid_post[-1], np.float64)
    rms = np.sqrt(np.mean(final ** 2, axis=-1) + cfg.norm_eps)  # [B, T]
    columns = np.asarray(params["unembed"]["kernel"], np.float64).T[targets]  # [B, T, D]
    weight = columns * np.asarray(params["final_norm"]["scale"], np.float64) / rms[..., None]
    heads = np.einsum("lbthd,btd->lbth", np.asarray(out.trace.head_out, np.float64), weight)
    mlps = np.einsum("lbtd,btd->lbt", np.asarray(out.trace.mlp_out, np.float64), weight)
    embed = np.einsum("btd,btd->bt", np.asarray(out.trace.residual[0], np.float64), weight)
    chex.assert_trees_all_close(dla, decompose.DLA(embed, heads, mlps), atol=1e-5, rtol=1e-5)


def test_without_resid_post_the_norm_reads_the_components_sum(cfg, params, tokens, out):
    targets = next_tokens(tokens)
    with_stream = decompose.direct_logit_attribution(params, cfg, out.trace, targets)
    from_parts = decompose.direct_logit_attribution(params, cfg, out.trace.replace(resid_post=None), targets)
    chex.assert_trees_all_close(from_parts, with_stream, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(attribute(params, cfg, out.trace, targets), with_stream, atol=1e-6, rtol=1e-5)


def test_tied_embeddings_without_the_gate(params, tokens):
    cfg, params = TIED, tied(params)
    out = forward(params, tokens, cfg=cfg, record=RECORD)
    targets, contrast = next_tokens(tokens), jnp.full_like(tokens, 7)
    chex.assert_trees_all_close(decompose.residual_decomposition(out.trace).total(), out.trace.resid_post[-1],
                                atol=1e-5, rtol=0)
    dla = attribute(params, cfg, out.trace, targets, contrast)
    chex.assert_trees_all_close(dla.total(), decompose.logit_difference(out.logits, targets, contrast), atol=1e-4,
                                rtol=0)


def test_unembedding_columns_of_a_quantized_tied_embedding(params):
    """Rows gathered from an int8 embedding equal the dequantised matrix's columns, bit for bit."""
    cfg = TIED
    quantized = sj.quant.quantize(tied(params), cfg, bits=8, group_size=8)
    ids = jnp.array([[0, 5, 63], [7, 7, 1]])
    matrix = np.asarray(as_array(quantized["embed"], jnp.float32)).T  # [D, V], as sage_jax.model.unembed reads it
    np.testing.assert_array_equal(decompose.unembedding_columns(quantized, cfg, ids), matrix.T[ids])


class TestErrors:
    def test_missing_fields_name_the_record(self, cfg, params, tokens, out):
        with pytest.raises(ValueError, match=r"Trace.head_out.*record=\('residual', 'head_out', 'mlp_out'\)"):
            decompose.residual_decomposition(out.trace.replace(head_out=None))

    def test_selected_layers_are_refused(self, cfg, params, tokens, out):
        trace = jax.tree_util.tree_map(lambda x: x[:1], out.trace)
        with pytest.raises(ValueError, match="all 2 layers.*Record.layers"):
            decompose.direct_logit_attribution(params, cfg, trace, tokens)

    def test_targets_of_the_wrong_shape(self, cfg, params, tokens, out):
        with pytest.raises(ValueError, match=r"contrast has shape \(2,\); expected \[batch, positions\]"):
            decompose.direct_logit_attribution(params, cfg, out.trace, tokens, jnp.zeros((2,), jnp.int32))

    def test_fields_of_different_forwards(self, out):
        with pytest.raises(ValueError, match="do not describe one forward"):
            decompose.residual_decomposition(out.trace.replace(mlp_out=out.trace.mlp_out[:, :, :5]))
