"""Edits builders: null edits are exact no-ops, edge cuts delete tokens soundly, patches copy streams."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.interpret import interventions as iv
from tests.conftest import make_tokens

forward = jax.jit(sj.forward, static_argnames=("cfg", "record"))  # eager forwards retrace the scan

T = 10


@pytest.fixture(scope="module")
def seq(cfg):
    return make_tokens(cfg, (1, T), seed=3)


def test_null_interventions_change_nothing_bitwise(cfg, params, seq):
    plain = forward(params, seq, cfg)
    trace = forward(params, seq, cfg, record=("residual",)).trace
    nothing = jnp.zeros((T, T), bool)
    null_edits = {
        "ablate_heads": iv.ablate_heads(cfg, jnp.zeros((cfg.n_layers, cfg.n_heads), bool)),
        "cut_edges": iv.cut_edges(cfg, nothing),
        "scale_edges": iv.scale_edges(cfg, nothing, 0.5),
        "patch_residual": iv.patch_residual(trace, trace, layers=jnp.ones(cfg.n_layers, bool),
                                            positions=jnp.ones(T, bool)),
        "renormalised_cut": iv.renormalised_cut(params, cfg, seq, nothing),
    }
    null_edits["combine"] = iv.combine(*null_edits.values())
    for name, edits in null_edits.items():
        out = forward(params, seq, cfg, edits=edits)
        np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(plain.logits), err_msg=name)
        np.testing.assert_array_equal(np.asarray(out.meta), np.asarray(plain.meta), err_msg=name)


def test_builders_return_full_shapes(cfg, seq):
    edits = iv.cut_edges(cfg, jnp.ones((T, T), bool), batch=3)
    assert edits.prob_scale.shape == (cfg.n_layers, 3, cfg.n_heads, T, T)
    assert iv.ablate_heads(cfg, jnp.ones((cfg.n_layers, cfg.n_heads), bool), batch=3).head_mask.shape == (
        cfg.n_layers, 3, cfg.n_heads)


@pytest.mark.parametrize("deleted", [0, 4, 7])
def test_renormalised_cut_of_every_edge_into_a_token_equals_masking_it_out(cfg, params, seq, deleted):
    """Deletion by edge cutting is sound: it is exactly the model never seeing the token."""
    others = jnp.arange(T) != deleted
    edits = iv.renormalised_cut(params, cfg, seq, iv.edges(others, ~others))
    cut = forward(params, seq, cfg, edits=edits)
    masked = forward(params, seq, cfg, mask=others[None], positions=jnp.arange(T)[None])
    chex.assert_trees_all_close(cut.logits[0, others], masked.logits[0, others], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(cut.meta[0, others], masked.meta[0, others], atol=1e-5, rtol=1e-5)
    changed = np.abs(np.asarray(cut.logits - forward(params, seq, cfg).logits))[0, others].max()
    assert deleted == 0 or changed > 1e-4  # the token mattered, so the equality is not vacuous


def test_prob_scale_cut_drops_the_mass_instead_of_renormalising(cfg, params, seq):
    """The one-pass cut is a zero-value ablation: rows lose the cut key's probability."""
    others = jnp.arange(T) != 4
    attn = forward(params, seq, cfg, edits=iv.cut_edges(cfg, iv.edges(others, ~others)), record=("attn",)).trace.attn
    clean = forward(params, seq, cfg, record=("attn",)).trace.attn
    row_sums = attn[0, 0, :, 5:].sum(-1)  # layer 0 queries after the cut key
    chex.assert_trees_all_close(row_sums, 1.0 - clean[0, 0, :, 5:, 4], atol=1e-6)
    renormalised = forward(params, seq, cfg, edits=iv.renormalised_cut(params, cfg, seq, iv.edges(others, ~others)),
                              record=("attn",)).trace.attn
    chex.assert_trees_all_close(renormalised[:, 0, :, 5:].sum(-1), jnp.ones_like(renormalised[:, 0, :, 5:, 0]),
                                atol=1e-6)


def test_scale_edges_multiplies_the_selected_probabilities(cfg, params, seq):
    edge_set = iv.edges(jnp.arange(T) == 6, jnp.arange(T) == 2)
    heads = jnp.arange(cfg.n_heads) == 2
    edits = iv.scale_edges(cfg, edge_set, 3.0, layers=jnp.array([True, False]), heads=heads)
    attn = forward(params, seq, cfg, edits=edits, record=("attn",)).trace.attn
    clean = forward(params, seq, cfg, record=("attn",)).trace.attn
    np.testing.assert_allclose(attn[0, 0, 2, 6, 2], 3.0 * clean[0, 0, 2, 6, 2], rtol=1e-6)
    untouched = np.ones(attn.shape[2:], bool)
    untouched[2, 6, 2] = False
    np.testing.assert_array_equal(np.asarray(attn[0, 0])[untouched], np.asarray(clean[0, 0])[untouched])


def test_ablate_heads_zeroes_exactly_the_selected_head(cfg, params, seq):
    heads = iv.head_selection(cfg, [(1, 3)])
    out = forward(params, seq, cfg, edits=iv.ablate_heads(cfg, heads), record=("head_out",))
    assert not np.any(np.asarray(out.trace.head_out[1, :, :, 3]))
    clean = forward(params, seq, cfg, record=("head_out",))
    np.testing.assert_array_equal(np.asarray(out.trace.head_out[0]), np.asarray(clean.trace.head_out[0]))
    assert np.abs(np.asarray(out.logits - clean.logits)).max() > 1e-5


def test_mean_ablation_adds_the_reference_mean_where_the_next_block_starts(cfg, params, seq):
    reference = forward(params, make_tokens(cfg, (4, T), seed=9), cfg, record=("head_out",)).trace
    heads = iv.head_selection(cfg, [(0, 1)])
    mean = reference.head_out[0, :, :, 1].mean(axis=(0, 1))  # [D]
    ablated = forward(params, seq, cfg, edits=iv.mean_ablate_heads(cfg, heads, reference, batch=1, seq_len=T),
                         record=("residual",)).trace.residual
    zeroed = forward(params, seq, cfg, edits=iv.ablate_heads(cfg, heads), record=("residual",)).trace.residual
    chex.assert_trees_all_close(ablated[1], zeroed[1] + mean, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ablated[0]), np.asarray(zeroed[0]))


def test_mean_ablation_of_a_last_layer_head_is_refused(cfg, params, seq):
    reference = forward(params, seq, cfg, record=("head_out",)).trace
    with pytest.raises(ValueError, match="last layer"):
        iv.mean_ablate_heads(cfg, iv.head_selection(cfg, [(cfg.n_layers - 1, 0)]), reference, batch=1, seq_len=T)


def test_patching_every_position_at_layer_zero_reproduces_the_other_run(cfg, params, seq):
    other_tokens = make_tokens(cfg, (1, T), seed=11)
    this = forward(params, seq, cfg, record=("residual",))
    other = forward(params, other_tokens, cfg, record=("residual",))
    edits = iv.patch_residual(this.trace, other.trace, layers=jnp.arange(cfg.n_layers) == 0,
                              positions=jnp.ones(T, bool))
    chex.assert_trees_all_close(forward(params, seq, cfg, edits=edits).logits, other.logits, atol=1e-5)
    partial = iv.patch_residual(this.trace, other.trace, layers=jnp.arange(cfg.n_layers) == 1,
                                positions=jnp.arange(T) == 5)
    patched = forward(params, seq, cfg, edits=partial, record=("residual",)).trace.residual
    chex.assert_trees_all_close(patched[1, 0, 5], other.trace.residual[1, 0, 5], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(patched[1, 0, :5]), np.asarray(this.trace.residual[1, 0, :5]))


def test_combine_multiplies_scales_and_adds_deltas(cfg):
    a = iv.scale_edges(cfg, jnp.ones((T, T), bool), 2.0)
    b = iv.scale_edges(cfg, jnp.ones((T, T), bool), 3.0)
    d = sj.Edits(residual_delta=jnp.ones((cfg.n_layers, 1, T, cfg.d_model)))
    both = iv.combine(a, b, d, d)
    np.testing.assert_array_equal(np.asarray(both.prob_scale), 6.0)
    np.testing.assert_array_equal(np.asarray(both.residual_delta), 2.0)
    replace = sj.Edits(attn_where=jnp.zeros((1, 1, 1, 1, 1), bool), attn_value=jnp.zeros((1, 1, 1, 1, 1)))
    with pytest.raises(ValueError, match="attn_where"):
        iv.combine(replace, replace)


def test_bad_shapes_name_the_argument(cfg):
    with pytest.raises(ValueError, match="heads has shape"):
        iv.ablate_heads(cfg, jnp.zeros((cfg.n_heads,), bool))
    with pytest.raises(ValueError, match="edge_set"):
        iv.cut_edges(cfg, jnp.zeros((T,), bool))
    with pytest.raises(ValueError, match="head \\(layer 5"):
        iv.head_selection(cfg, [(5, 0)])
