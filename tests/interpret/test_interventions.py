"""Edits builders: null edits are exact no-ops, edge cuts delete tokens soundly, head replacements are exact
in every layer, patches copy streams."""

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
        "zero_edges": iv.zero_edges(cfg, nothing),
        "scale_edges": iv.scale_edges(cfg, nothing, 0.5),
        "patch_residual": iv.patch_residual(trace, trace, layers=jnp.ones(cfg.n_layers, bool),
                                            positions=jnp.ones(T, bool)),
    }
    null_edits["merge_edits"] = iv.merge_edits(*null_edits.values())
    for name, edits in null_edits.items():
        out = forward(params, seq, cfg, edits=edits)
        np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(plain.logits), err_msg=name)
        np.testing.assert_array_equal(np.asarray(out.meta), np.asarray(plain.meta), err_msg=name)


def test_builders_return_full_shapes(cfg, seq):
    assert iv.cut_edges(cfg, jnp.ones((T, T), bool), batch=3).edge_mask.shape == (cfg.n_layers, 3, cfg.n_heads, T, T)
    assert iv.zero_edges(cfg, jnp.ones((T, T), bool), batch=3).prob_scale.shape == (
        cfg.n_layers, 3, cfg.n_heads, T, T)
    reference = sj.Trace(head_out=jnp.ones((cfg.n_layers, 2, 4, cfg.n_heads, cfg.d_model)))
    mean = iv.mean_ablate_heads(cfg, jnp.ones((cfg.n_layers, cfg.n_heads), bool), reference, batch=3, seq_len=T)
    assert mean.head_mask.shape == (cfg.n_layers, 3, cfg.n_heads)
    assert mean.head_delta.shape == (cfg.n_layers, 3, T, cfg.n_heads, cfg.d_model)
    assert iv.ablate_heads(cfg, jnp.ones((cfg.n_layers, cfg.n_heads), bool), batch=3).head_mask.shape == (
        cfg.n_layers, 3, cfg.n_heads)


@pytest.mark.parametrize("deleted", [0, 4, 7])
def test_cut_of_every_edge_into_a_token_equals_masking_it_out(cfg, params, seq, deleted):
    """Deletion by edge cutting is sound: it is exactly the model never seeing the token."""
    others = jnp.arange(T) != deleted
    edits = iv.cut_edges(cfg, iv.edges(others, ~others))
    cut = forward(params, seq, cfg, edits=edits)
    masked = forward(params, seq, cfg, mask=others[None], positions=jnp.arange(T)[None])
    chex.assert_trees_all_close(cut.logits[0, others], masked.logits[0, others], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(cut.meta[0, others], masked.meta[0, others], atol=1e-5, rtol=1e-5)
    changed = np.abs(np.asarray(cut.logits - forward(params, seq, cfg).logits))[0, others].max()
    assert deleted == 0 or changed > 1e-4  # the token mattered, so the equality is not vacuous


def test_zero_edges_drops_the_mass_where_cut_edges_renormalises(cfg, params, seq):
    """The post-softmax cut is a zero-value ablation: rows lose the cut key's probability."""
    edge_set = iv.edges(jnp.arange(T) != 4, jnp.arange(T) == 4)
    attn = forward(params, seq, cfg, edits=iv.zero_edges(cfg, edge_set), record=("attn",)).trace.attn
    clean = forward(params, seq, cfg, record=("attn",)).trace.attn
    row_sums = attn[0, 0, :, 5:].sum(-1)  # layer 0 queries after the cut key
    chex.assert_trees_all_close(row_sums, 1.0 - clean[0, 0, :, 5:, 4], atol=1e-6)
    assert float(clean[0, 0, cfg.n_reasoning_heads, 5:, 4].min()) > 1e-3  # the memory head had mass to lose
    cut = forward(params, seq, cfg, edits=iv.cut_edges(cfg, edge_set), record=("attn",)).trace.attn
    np.testing.assert_array_equal(np.asarray(cut[:, 0, :, 5:, 4]), 0.0)
    chex.assert_trees_all_close(cut[:, 0].sum(-1), jnp.ones_like(cut[:, 0, :, :, 0]), atol=1e-6)


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


def test_mean_ablation_equals_a_by_hand_replacement_in_every_layer(cfg, params, seq):
    """Head mask 0 plus the reference mean as head delta, built by hand, at a first- and a last-layer head."""
    reference = forward(params, make_tokens(cfg, (4, T), seed=9), cfg, record=("head_out",)).trace
    last = cfg.n_layers - 1
    chosen = [(0, 1), (last, 0)]
    mask = jnp.ones((cfg.n_layers, 1, cfg.n_heads))
    delta = jnp.zeros((cfg.n_layers, 1, T, cfg.n_heads, cfg.d_model))
    for layer, head in chosen:
        mask = mask.at[layer, :, head].set(0.0)
        delta = delta.at[layer, :, :, head].set(reference.head_out[layer, :, :, head].mean(axis=(0, 1)))
    by_hand = forward(params, seq, cfg, edits=sj.Edits(head_mask=mask, head_delta=delta), record=("head_out",))
    edits = iv.mean_ablate_heads(cfg, iv.head_selection(cfg, chosen), reference, batch=1, seq_len=T)
    ablated = forward(params, seq, cfg, edits=edits, record=("head_out",))
    chex.assert_trees_all_close(ablated.logits, by_hand.logits, atol=1e-6)
    chex.assert_trees_all_close(ablated.trace.head_out, by_hand.trace.head_out, atol=1e-6)
    for layer, head in chosen:  # the head contributes its reference mean at every position
        chex.assert_trees_all_close(ablated.trace.head_out[layer, 0, :, head], delta[layer, 0, :, head], atol=1e-6)
    zeroed = forward(params, seq, cfg, edits=iv.ablate_heads(cfg, iv.head_selection(cfg, chosen)),
                     record=("head_out",)).logits
    assert np.abs(np.asarray(ablated.logits - zeroed)).max() > 1e-4  # the mean is not zero: not vacuous


def test_mean_ablation_over_positions_only_gives_each_row_its_own_mean(cfg):
    head_out = jax.random.normal(jax.random.key(4), (cfg.n_layers, 2, 6, cfg.n_heads, cfg.d_model))
    heads = iv.head_selection(cfg, [(cfg.n_layers - 1, 2)])
    edits = iv.mean_ablate_heads(cfg, heads, sj.Trace(head_out=head_out), batch=2, seq_len=T, over_batch=False)
    row_means = head_out[-1, :, :, 2].mean(axis=1, keepdims=True)  # [2, 1, D]
    chex.assert_trees_all_close(edits.head_delta[-1, :, :, 2], jnp.broadcast_to(row_means, (2, T, cfg.d_model)),
                                atol=1e-6)
    np.testing.assert_array_equal(np.asarray(edits.head_delta[:, :, :, :2]), 0.0)  # other heads untouched
    np.testing.assert_array_equal(np.asarray(edits.head_mask), np.asarray(jnp.where(heads, 0.0, 1.0)[:, None]
                                                                          .repeat(2, axis=1)))
    with pytest.raises(ValueError, match="over_batch=False"):
        iv.mean_ablate_heads(cfg, heads, sj.Trace(head_out=head_out), batch=1, seq_len=T, over_batch=False)
    with pytest.raises(ValueError, match="head_out is None"):
        iv.mean_ablate_heads(cfg, heads, sj.Trace(), batch=1, seq_len=T)


@pytest.mark.parametrize("layer", [0, 1])
def test_patching_every_head_output_at_a_layer_reproduces_the_other_run(cfg, params, seq, layer):
    """The other run differs from this one only inside `layer`'s attention (an edge cut there), so taking
    every head's output at that layer from it reproduces its layer output and hence its logits."""
    at_layer = jnp.arange(cfg.n_layers) == layer
    cut = iv.cut_edges(cfg, iv.edges(jnp.arange(T) >= 3, jnp.arange(T) == 2), layers=at_layer)
    this = forward(params, seq, cfg, record=("head_out",))
    other = forward(params, seq, cfg, edits=cut, record=("head_out",))
    assert np.abs(np.asarray(other.logits - this.logits)).max() > 1e-4  # the cut matters: not vacuous
    heads = jnp.broadcast_to(at_layer[:, None], (cfg.n_layers, cfg.n_heads))
    patched = forward(params, seq, cfg, edits=iv.patch_head_outputs(this.trace, other.trace, heads),
                      record=("head_out",))
    chex.assert_trees_all_close(patched.trace.head_out, other.trace.head_out, atol=1e-6)
    chex.assert_trees_all_close(patched.hidden, other.hidden, atol=1e-5)
    chex.assert_trees_all_close(patched.logits, other.logits, atol=1e-5)


def test_head_output_patching_at_some_positions_keeps_the_others(cfg, params, seq):
    this = forward(params, seq, cfg, record=("head_out",))
    other = forward(params, make_tokens(cfg, (1, T), seed=11), cfg, record=("head_out",))
    heads = iv.head_selection(cfg, [(1, 3)])
    edits = iv.patch_head_outputs(this.trace, other.trace, heads, positions=jnp.arange(T) == 5)
    patched = forward(params, seq, cfg, edits=edits, record=("head_out",)).trace.head_out
    chex.assert_trees_all_close(patched[1, 0, 5, 3], other.trace.head_out[1, 0, 5, 3], atol=1e-6)
    chex.assert_trees_all_close(patched[1, 0, :5], this.trace.head_out[1, 0, :5], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(patched[0]), np.asarray(this.trace.head_out[0]))
    with pytest.raises(ValueError, match="head_out is None"):
        iv.patch_head_outputs(sj.Trace(), other.trace, heads)


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


def test_combine_multiplies_scales_intersects_cuts_and_adds_deltas(cfg):
    a = iv.scale_edges(cfg, jnp.ones((T, T), bool), 2.0)
    b = iv.scale_edges(cfg, jnp.ones((T, T), bool), 3.0)
    d = sj.Edits(residual_delta=jnp.ones((cfg.n_layers, 1, T, cfg.d_model)),
                 head_delta=jnp.ones((cfg.n_layers, 1, T, cfg.n_heads, cfg.d_model)))
    both = iv.merge_edits(a, b, d, d)
    np.testing.assert_array_equal(np.asarray(both.prob_scale), 6.0)
    np.testing.assert_array_equal(np.asarray(both.residual_delta), 2.0)
    np.testing.assert_array_equal(np.asarray(both.head_delta), 2.0)
    one, two = jnp.arange(T) == 1, jnp.arange(T) == 2
    cuts = iv.merge_edits(iv.cut_edges(cfg, iv.edges(one, one)), iv.cut_edges(cfg, iv.edges(two, two)))
    kept = ~np.asarray(iv.edges(one, one) | iv.edges(two, two))
    np.testing.assert_array_equal(np.asarray(cuts.edge_mask[0, 0, 0]), kept)
    replace = sj.Edits(attn_where=jnp.zeros((1, 1, 1, 1, 1), bool), attn_value=jnp.zeros((1, 1, 1, 1, 1)))
    with pytest.raises(ValueError, match="attn_where"):
        iv.merge_edits(replace, replace)


def test_bad_shapes_name_the_argument(cfg):
    with pytest.raises(ValueError, match="heads has shape"):
        iv.ablate_heads(cfg, jnp.zeros((cfg.n_heads,), bool))
    with pytest.raises(ValueError, match="edge_set"):
        iv.cut_edges(cfg, jnp.zeros((T,), bool))
    with pytest.raises(ValueError, match="outputs has shape"):
        iv.replace_heads(cfg, jnp.zeros((cfg.n_layers, cfg.n_heads), bool),
                         jnp.zeros((cfg.n_layers, 1, T, cfg.d_model)))
    with pytest.raises(ValueError, match="head \\(layer 5"):
        iv.head_selection(cfg, [(5, 0)])
