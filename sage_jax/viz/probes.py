"""Static figures of the standard probes: the logit lens, direct logit attribution, and head detector scores.

They follow `sage_jax.viz.figures`: each call builds and returns a new `SageFigure` (never through pyplot);
every axes has a title and axis labels; token axes carry one tick label per token and head axes one label per
head with its group (`sage_jax.viz.labels`). They take plain arrays (numpy or jax), not probe results, so that
any computation of the same quantities (another lens, a tuned lens, a hand-made score) can be drawn.
Shapes: `L` layers, `H` heads, `T` tokens; a lens has `L + 1` depths (row 0 the token embedding, row `L` the
stream the final norm reads).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np
from matplotlib.colors import Normalize, SymLogNorm
from matplotlib.figure import Figure

from sage_jax.config import SageConfig
from sage_jax.viz.figures import SageFigure, _token_ticks
from sage_jax.viz.labels import display_labels, head_groups, head_labels


class LensKind(NamedTuple):
    """How `logit_lens_figure` colours one kind of readout.

    Attributes:
      label: the colour bar's label.
      cmap: the colour map; the better value is always the brighter end.
      low, high: fixed ends of the colour scale (`None`: the data's own minimum or maximum).
      log: a symmetric-log scale (ranks span 0 to the vocabulary size; what matters is 0, 1, 10, 100).
    """

    label: str
    cmap: str
    low: Optional[float]
    high: Optional[float]
    log: bool = False


LENS_KINDS = {
    "rank": LensKind("rank of the target (0 = top prediction)", "viridis_r", 0.0, None, log=True),
    "log_prob": LensKind("log p(target) (nats)", "viridis", None, 0.0),
    "prob": LensKind("p(target)", "viridis", 0.0, 1.0),
    "logit": LensKind("logit of the target", "viridis", None, None),
    "kl": LensKind("KL(final || depth) (nats)", "viridis_r", 0.0, None),
}
"""The readouts `logit_lens_figure` knows (`lens_ranks`, `lens_log_probs`, their `exp`, raw logits, `lens_kl`)."""


def depth_labels(n_depths: int) -> list[str]:
    """One label per lens depth: `embedding`, then `after layer l` for the stream leaving block `l`, the last
    marked `(final)`."""
    labels = ["embedding"] + [f"after layer {l}" for l in range(n_depths - 1)]
    labels[-1] += " (final)"
    return labels


def _heads(cfg: Optional[SageConfig], n_heads: int) -> list[str]:
    return head_labels(cfg) if cfg is not None else [f"h{h}" for h in range(n_heads)]


def _group_lines(ax, cfg: Optional[SageConfig]) -> None:
    """Vertical lines between head groups, so a group reads as one block of columns."""
    if cfg is None:
        return
    for _, heads, _ in head_groups(cfg)[1:]:
        ax.axvline(heads[0] - 0.5, color="black", linewidth=1.2)


def _check_layers_heads(name: str, value: np.ndarray, cfg: Optional[SageConfig]) -> None:
    if value.ndim != 2 or 0 in value.shape:
        raise ValueError(f"{name} has shape {value.shape}; expected [layers, heads], neither empty")
    if cfg is not None and value.shape != (cfg.n_layers, cfg.n_heads):
        raise ValueError(f"{name} has shape {value.shape}; expected [layers, heads] = [{cfg.n_layers}, "
                         f"{cfg.n_heads}] (n_layers, n_heads of {cfg.name!r})")


def logit_lens_figure(values, labels: Sequence[str], *, kind: str = "rank", top_tokens=None,
                      title: Optional[str] = None) -> Figure:
    """Depth x position heatmap of what the residual stream at each depth says about a target token.

    Args:
      values: `[L + 1, T]` one readout per depth and position for one sequence, e.g. the target's rank
        (`lens_ranks(...)[:, b]`) or log-probability; row 0 is the embedding, row `L` the final stream (whose
        readout is the model's own).
      labels: `T` token labels (`token_labels`).
      kind: which readout `values` holds, a key of `LENS_KINDS`: sets the colour map, scale and label.
      top_tokens: optional `[L + 1, T]` strings, the lens's top token at each cell, written inside it.
      title: the figure title.

    Raises:
      ValueError: `values`, `labels`, `top_tokens` or `kind` do not fit together (the message names which).
    """
    if kind not in LENS_KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {sorted(LENS_KINDS)}")
    style = LENS_KINDS[kind]
    values = np.asarray(values, np.float32)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"values has shape {values.shape}; expected [L + 1, T] (one row per depth: the "
                         "embedding, then the stream after each layer) of one sequence")
    if values.shape[1] != len(labels):
        raise ValueError(f"values has {values.shape[1]} positions; expected {len(labels)} (one column per token "
                         "label)")
    if top_tokens is not None:
        top_tokens = np.asarray(top_tokens, dtype=object)
        if top_tokens.shape != values.shape:
            raise ValueError(f"top_tokens has shape {top_tokens.shape}; expected {values.shape} (one string per "
                             "cell of values)")
    depths, positions = values.shape
    finite = values[np.isfinite(values)]
    low = style.low if style.low is not None else float(finite.min()) if finite.size else 0.0
    high = style.high if style.high is not None else float(finite.max()) if finite.size else low + 1.0
    high = high if high > low else low + 1.0
    norm = SymLogNorm(linthresh=1.0, vmin=low, vmax=high) if style.log else Normalize(vmin=low, vmax=high)
    width = (0.5 if top_tokens is not None else 0.22) * positions + 3.0
    fig = SageFigure(figsize=(max(6.0, width), 1.5 + 0.4 * depths + 1.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap=style.cmap, norm=norm, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=style.label, shrink=0.8)
    if top_tokens is not None:
        for (row, column), token in np.ndenumerate(top_tokens):
            red, green, blue, _ = image.cmap(norm(values[row, column]))
            bright = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # dark text on light cells
            ax.text(column, row, display_labels([token])[0], ha="center", va="center", fontsize=6,
                    fontfamily="monospace", color="black" if bright else "white")
    _token_ticks(ax, labels, "x")
    ax.set_yticks(np.arange(depths), depth_labels(depths), fontsize=8)
    ax.set_xlabel("position (token)")
    ax.set_ylabel("depth (residual stream)")
    ax.set_title(title or f"Logit lens: {style.label} at every depth", fontsize=10)
    return fig


def direct_logit_attribution_figure(embed, heads, mlps, *, cfg: Optional[SageConfig] = None,
                                    title: Optional[str] = None) -> Figure:
    """Each component's direct contribution to one logit (or logit difference): heads as a layer x head heatmap,
    the embedding and every layer's FFN as bars beside it, all on one diverging colour scale.

    Args:
      embed: a scalar, the token embedding's contribution.
      heads: `[L, H]` each head's contribution.
      mlps: `[L]` each layer's FFN contribution.
      cfg: the model config; when given, heads are labelled with their group and groups are separated.
      title: the figure title.

    The bar panel's title states the sum of every component, which is what the direct attribution adds up to.

    Raises:
      ValueError: `embed` is not a scalar, `heads` is not `[L, H]` (`[cfg.n_layers, cfg.n_heads]` with `cfg`),
        or `mlps` is not `[L]`.
    """
    if np.ndim(embed) != 0:
        raise ValueError(f"embed has shape {np.shape(embed)}; expected a scalar (one contribution)")
    embed = float(embed)
    heads = np.asarray(heads, np.float32)
    _check_layers_heads("heads", heads, cfg)
    mlps = np.asarray(mlps, np.float32)
    if mlps.shape != heads.shape[:1]:
        raise ValueError(f"mlps has shape {mlps.shape}; expected [layers] = [{heads.shape[0]}] (one FFN per layer "
                         "of heads)")
    n_layers, n_heads = heads.shape
    bound = float(max(np.abs(heads).max(), np.abs(mlps).max(), abs(embed))) or 1.0
    norm = Normalize(vmin=-bound, vmax=bound)
    fig = SageFigure(figsize=(max(7.0, 0.5 * n_heads + 6.0), 2.0 + 0.4 * (n_layers + 1)), layout="constrained")
    grid, bars = fig.subplots(1, 2, width_ratios=(max(n_heads, 2), 3))
    image = grid.imshow(heads, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    _group_lines(grid, cfg)
    grid.set_xticks(np.arange(n_heads), display_labels(_heads(cfg, n_heads)), rotation=45, ha="right", fontsize=8)
    grid.set_yticks(np.arange(n_layers), [f"layer {l}" for l in range(n_layers)], fontsize=8)
    grid.set_xlabel("head (index and group)" if cfg is not None else "head")
    grid.set_ylabel("layer")
    grid.set_title("attention heads", fontsize=10)
    components = np.concatenate([[embed], mlps])
    rows = np.arange(n_layers + 1)
    bars.barh(rows, components, color=image.cmap(norm(components)), edgecolor="0.3", linewidth=0.5)
    bars.axvline(0.0, color="0.5", linewidth=0.8)
    bars.set_xlim(-1.05 * bound, 1.05 * bound)
    bars.set_ylim(n_layers + 0.5, -0.5)
    bars.set_yticks(rows, ["embedding"] + [f"layer {l} FFN" for l in range(n_layers)], fontsize=8)
    bars.set_xlabel("direct contribution")
    bars.set_ylabel("component")
    total = float(heads.sum() + mlps.sum() + embed)
    bars.set_title(f"embedding and FFNs (all components sum to {total:.3g})", fontsize=10)
    fig.colorbar(image, ax=(grid, bars), label="direct contribution to the logit", shrink=0.8)
    fig.suptitle(title or "Direct logit attribution")
    return fig


def head_scores_figure(scores: Mapping[str, object], *, cfg: Optional[SageConfig] = None,
                       title: Optional[str] = None) -> Figure:
    """One layer x head heatmap per head detector, on one shared colour scale `[0, max]` so that the detectors'
    scores compare across panels.

    Args:
      scores: detector name (e.g. `"previous_token"`, `"induction"`, `"receiver"`) -> `[L, H]` scores, all of one
        shape; a score below 0 is drawn as 0.
      cfg: the model config; when given, heads are labelled with their group and groups are separated.
      title: the figure title.

    Raises:
      ValueError: no scores, a score that is not `[L, H]` (`[cfg.n_layers, cfg.n_heads]` with `cfg`), or scores of
        different shapes (the message names the detector).
    """
    if not scores:
        raise ValueError("scores is empty; give at least one detector's [layers, heads] scores")
    arrays = {name: np.asarray(value, np.float32) for name, value in scores.items()}
    shape = None
    for name, value in arrays.items():
        _check_layers_heads(f"scores[{name!r}]", value, cfg)
        shape = shape or value.shape
        if value.shape != shape:
            raise ValueError(f"scores[{name!r}] has shape {value.shape}; expected {shape}, the shape of the first "
                             "detector's scores")
    n_layers, n_heads = shape
    high = float(max(np.nanmax(v, initial=0.0) for v in arrays.values())) or 1.0
    panel = max(2.5, 0.45 * n_heads + 1.2)
    fig = SageFigure(figsize=(panel * len(arrays) + 1.2, 1.8 + 0.4 * n_layers + 1.0), layout="constrained")
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    image = None
    for column, (ax, (name, value)) in enumerate(zip(axes, arrays.items())):
        image = ax.imshow(value, cmap="viridis", vmin=0.0, vmax=high, aspect="auto", interpolation="nearest")
        _group_lines(ax, cfg)
        ax.set_xticks(np.arange(n_heads), display_labels(_heads(cfg, n_heads)), rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(np.arange(n_layers), [f"layer {l}" for l in range(n_layers)], fontsize=8)
        ax.tick_params(labelleft=column == 0)
        ax.set_xlabel("head (index and group)" if cfg is not None else "head")
        ax.set_ylabel("layer")
        ax.set_title(display_labels([name])[0], fontsize=10)
    fig.colorbar(image, ax=axes, label="score (shared scale)", shrink=0.8)
    fig.suptitle(title or "Head detector scores")
    return fig
