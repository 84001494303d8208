"""The probe figures of `sage_jax.viz.probes`, on plain arrays: cells, tick labels, colour scales and cell texts are
asserted from the artists (behaviour, not pixels), and bad input raises naming the argument."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import sage_jax as sj
from sage_jax.viz.labels import head_labels
from sage_jax.viz.probes import (LENS_KINDS, depth_labels, direct_logit_attribution_figure, head_scores_figure,
                                 logit_lens_figure)

LABELS = ["<bos>", "7", "+", "5", "=", "$x"]


@pytest.fixture(scope="module")
def cfg():
    return sj.configs.get("test")  # 2 layers; heads h0, h1 reasoning, h2 memory, h3 meta


def tick_texts(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


def cells(fig: Figure) -> list:
    """The axes that hold a heatmap (not colour bars, not bar charts)."""
    return [ax for ax in fig.axes if ax.images]


def test_depth_labels_name_the_embedding_and_the_final_stream():
    assert depth_labels(3) == ["embedding", "after layer 0", "after layer 1 (final)"]


def test_logit_lens_figure_has_one_row_per_depth_and_one_column_per_token(cfg):
    ranks = np.arange((cfg.n_layers + 1) * len(LABELS)).reshape(cfg.n_layers + 1, len(LABELS))[::-1]
    fig = logit_lens_figure(jnp.asarray(ranks), LABELS)
    assert isinstance(fig, Figure) and fig._repr_png_().startswith(b"\x89PNG")
    (ax,) = cells(fig)
    np.testing.assert_array_equal(ax.images[0].get_array(), ranks)
    assert tick_texts(ax.get_xticklabels()) == ["<bos>", "7", "+", "5", "=", r"\$x"]  # `$` never read as mathtext
    assert tick_texts(ax.get_yticklabels()) == ["embedding", "after layer 0", "after layer 1 (final)"]
    assert ax.get_xlabel() == "position (token)" and ax.get_ylabel() == "depth (residual stream)"
    assert LENS_KINDS["rank"].label in ax.get_title() and not ax.texts
    assert ax.images[0].get_clim() == (0.0, float(ranks.max()))
    colorbar = [a for a in fig.axes if a is not ax]
    assert len(colorbar) == 1 and colorbar[0].get_ylabel() == LENS_KINDS["rank"].label


def test_logit_lens_figure_writes_the_top_token_in_every_cell_and_scales_log_probs_to_zero(cfg):
    depths = cfg.n_layers + 1
    log_probs = -np.linspace(4.0, 0.5, depths * len(LABELS)).reshape(depths, len(LABELS))
    top = np.array([[f"t{d}{j}" for j in range(len(LABELS))] for d in range(depths)])
    (ax,) = cells(logit_lens_figure(log_probs, LABELS, kind="log_prob", top_tokens=top, title="lens"))
    assert ax.get_title() == "lens"
    assert [t.get_text() for t in ax.texts] == list(top.ravel())
    assert [t.get_position() for t in ax.texts] == [(j, d) for d in range(depths) for j in range(len(LABELS))]
    low, high = ax.images[0].get_clim()
    assert high == 0.0 and low == pytest.approx(-4.0)


def test_logit_lens_figure_scales_to_the_data_where_the_kind_has_no_fixed_end():
    kl = np.array([[0.3, 0.2], [0.0, 0.0]])
    (ax,) = cells(logit_lens_figure(kl, ["a", "b"], kind="kl"))
    assert ax.images[0].get_clim() == pytest.approx((0.0, 0.3))
    (ax,) = cells(logit_lens_figure(kl + 2.0, ["a", "b"], kind="logit"))
    assert ax.images[0].get_clim() == pytest.approx((2.0, 2.3))


def test_logit_lens_figure_rejects_bad_input(cfg):
    values = np.zeros((cfg.n_layers + 1, len(LABELS)))
    with pytest.raises(ValueError, match=r"values has shape \(3, 6, 1\)"):
        logit_lens_figure(values[..., None], LABELS)
    with pytest.raises(ValueError, match=r"values has shape \(1, 6\)"):
        logit_lens_figure(values[:1], LABELS)
    with pytest.raises(ValueError, match="values has 6 positions; expected 5"):
        logit_lens_figure(values, LABELS[:5])
    with pytest.raises(ValueError, match="top_tokens has shape"):
        logit_lens_figure(values, LABELS, top_tokens=[["a"] * len(LABELS)])
    with pytest.raises(ValueError, match="kind='entropy'"):
        logit_lens_figure(values, LABELS, kind="entropy")


def test_direct_logit_attribution_figure_shows_heads_bars_and_their_sum(cfg):
    rng = np.random.default_rng(0)
    heads = rng.normal(size=(cfg.n_layers, cfg.n_heads)).astype(np.float32)
    mlps = np.array([0.5, -3.0], np.float32)
    fig = direct_logit_attribution_figure(1.25, heads, mlps, cfg=cfg)
    assert fig.get_suptitle() == "Direct logit attribution"
    (grid,) = cells(fig)
    np.testing.assert_array_equal(grid.images[0].get_array(), heads)
    assert tick_texts(grid.get_xticklabels()) == head_labels(cfg)
    assert tick_texts(grid.get_yticklabels()) == ["layer 0", "layer 1"]
    assert grid.images[0].get_clim() == (-3.0, 3.0)  # symmetric, and shared with the bars: the largest is an FFN
    assert len(grid.lines) == 2  # between reasoning | memory | meta
    (bars,) = [ax for ax in fig.axes if ax.patches]
    assert [p.get_width() for p in bars.patches] == [1.25, 0.5, -3.0]
    assert tick_texts(bars.get_yticklabels()) == ["embedding", "layer 0 FFN", "layer 1 FFN"]
    assert f"{float(heads.sum()) + 1.25 - 2.5:.3g}" in bars.get_title()
    assert len(fig.axes) == 3  # heads, bars, one colour bar


def test_direct_logit_attribution_figure_without_cfg_labels_heads_by_index():
    (grid,) = cells(direct_logit_attribution_figure(0.0, np.zeros((3, 2)), np.zeros(3), title="t"))
    assert tick_texts(grid.get_xticklabels()) == ["h0", "h1"] and not grid.lines
    assert grid.images[0].get_clim() == (-1.0, 1.0)  # all zero: a unit scale, not a degenerate one


def test_direct_logit_attribution_figure_rejects_bad_input(cfg):
    heads, mlps = np.zeros((cfg.n_layers, cfg.n_heads)), np.zeros(cfg.n_layers)
    with pytest.raises(ValueError, match="embed has shape"):
        direct_logit_attribution_figure(np.zeros(2), heads, mlps)
    with pytest.raises(ValueError, match=r"heads has shape \(8,\)"):
        direct_logit_attribution_figure(0.0, heads.ravel(), mlps)
    with pytest.raises(ValueError, match=r"heads has shape \(2, 3\).*\[2, 4\]"):
        direct_logit_attribution_figure(0.0, heads[:, :3], mlps, cfg=cfg)
    with pytest.raises(ValueError, match=r"mlps has shape \(3,\)"):
        direct_logit_attribution_figure(0.0, heads, np.zeros(3))


def test_head_scores_figure_has_one_panel_per_detector_on_one_scale(cfg):
    rng = np.random.default_rng(1)
    scores = {name: rng.uniform(0, top, size=(cfg.n_layers, cfg.n_heads))
              for name, top in (("previous_token", 0.4), ("induction", 0.9), ("receiver", 0.2))}
    fig = head_scores_figure(scores, cfg=cfg)
    panels = cells(fig)
    assert [ax.get_title() for ax in panels] == list(scores)
    high = max(float(np.float32(v).max()) for v in scores.values())
    for column, (ax, value) in enumerate(zip(panels, scores.values())):
        np.testing.assert_allclose(ax.images[0].get_array(), value, rtol=1e-6)
        assert ax.images[0].get_clim() == pytest.approx((0.0, high))
        assert tick_texts(ax.get_xticklabels()) == head_labels(cfg)
        assert tick_texts(ax.get_yticklabels()) == (["layer 0", "layer 1"] if column == 0 else [])
        assert ax.get_xlabel() == "head (index and group)" and ax.get_ylabel() == "layer"
        assert len(ax.lines) == 2
    assert len(fig.axes) == len(scores) + 1 and fig.get_suptitle()


def test_head_scores_figure_rejects_bad_input(cfg):
    good = np.zeros((cfg.n_layers, cfg.n_heads))
    with pytest.raises(ValueError, match="scores is empty"):
        head_scores_figure({})
    with pytest.raises(ValueError, match=r"scores\['induction'\] has shape \(2, 4, 1\)"):
        head_scores_figure({"induction": good[..., None]})
    with pytest.raises(ValueError, match=r"scores\['receiver'\] has shape \(2, 3\); expected \(2, 4\)"):
        head_scores_figure({"induction": good, "receiver": good[:, :3]})
    with pytest.raises(ValueError, match=r"scores\['induction'\] has shape \(3, 4\).*\[2, 4\]"):
        head_scores_figure({"induction": np.zeros((3, cfg.n_heads))}, cfg=cfg)
