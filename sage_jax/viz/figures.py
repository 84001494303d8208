"""Static figures (matplotlib): attention, significance with decision points, faithfulness, patching, agreement.

Every function is pure: it builds a new `matplotlib.figure.Figure` (never through `pyplot`, so no global
figure registry and no display backend; `Figure.savefig` renders with Agg) and returns it. The figures are
`SageFigure`s, which Jupyter shows inline as PNG without pyplot; `figure.savefig(path)` writes one. Every
axes has a title and axis labels, and token axes carry one tick label per token
(`sage_jax.viz.labels.token_labels`), so a reader can follow the text.
Shapes: `L` layers, `H` heads, `T` tokens, `n` steps, `F` fractions.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sage_jax.config import SageConfig
from sage_jax.interpret.attribution import AgreementReport
from sage_jax.interpret.decisions import Decisions, StepDecision
from sage_jax.interpret.explanation import Explanation
from sage_jax.interpret.faithfulness import Faithfulness
from sage_jax.interpret.patching import PatchingResult
from sage_jax.viz.labels import display_labels, head_groups, head_labels, span_text

class SageFigure(Figure):
    """A matplotlib `Figure` that IPython displays as PNG (`_repr_png_`), with no pyplot or inline backend."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


DECISION_LABEL = "decision point (significance > {threshold:.2f})"
BRANCH_LABEL = "branching token (highest entropy)"
RANDOM = "random"


def _token_ticks(ax, labels: Sequence[str], axis: str) -> None:
    """One tick per token on `axis` ("x" or "y"), labelled with its text."""
    positions = np.arange(len(labels))
    shown = display_labels(labels)
    size = 7 if len(labels) <= 48 else 5
    if axis == "x":
        ax.set_xticks(positions, shown, rotation=90, fontsize=size, fontfamily="monospace")
    else:
        ax.set_yticks(positions, shown, fontsize=size, fontfamily="monospace")


def _check_square(name: str, value: np.ndarray, n_labels: int) -> None:
    if value.shape[-1] != n_labels or value.shape[-2] != n_labels:
        raise ValueError(f"{name} has shape {value.shape}; its last two axes [query, key] must match the "
                         f"{n_labels} token labels")


def attention_figure(attn, cfg: SageConfig, labels: Sequence[str], *, layers: Optional[Sequence[int]] = None,
                     per_head: bool = False, title: Optional[str] = None) -> Figure:
    """Attention heatmaps, one row per layer and one column per head group (or per head).

    Args:
      attn: `[L, H, T, T]` attention probabilities of one sequence (e.g. `trace.attn[:, b]`).
      cfg: the model config (head groups and spans).
      labels: `T` token labels (`token_labels`).
      layers: which layers to show (default all).
      per_head: one column per head instead of the mean of each group.
      title: the figure title.

    Each cell is query (rows) by key (columns); a group cell is the mean over its heads.
    """
    attn = np.asarray(attn, np.float32)
    if attn.ndim != 4 or attn.shape[:2] != (cfg.n_layers, cfg.n_heads):
        raise ValueError(f"attn has shape {attn.shape}; expected [layers, heads, T, T] = "
                         f"[{cfg.n_layers}, {cfg.n_heads}, T, T] (select one batch row: trace.attn[:, b])")
    _check_square("attn", attn, len(labels))
    layers = list(range(cfg.n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers={layers}: choose a non-empty subset of [0, {cfg.n_layers})")
    names = head_labels(cfg)
    if per_head:
        columns = [(names[h], (h,)) for h in range(cfg.n_heads)]
    else:
        columns = [(f"{name} heads {heads[0]}-{heads[-1]} ({span_text(span)})", heads)
                   for name, heads, span in head_groups(cfg)]
    cell = max(3.0, 0.14 * len(labels))
    fig = SageFigure(figsize=(cell * len(columns) + 1.0, cell * len(layers) + 1.0), layout="constrained")
    axes = fig.subplots(len(layers), len(columns), squeeze=False)
    image = None
    for r, layer in enumerate(layers):
        for c, (name, heads) in enumerate(columns):
            ax = axes[r, c]
            image = ax.imshow(attn[layer, list(heads)].mean(0), cmap="viridis", vmin=0.0, vmax=1.0,
                              interpolation="nearest")
            ax.set_title(f"layer {layer} · {name}", fontsize=9)
            ax.set_xlabel("key (attended token)", fontsize=8)
            ax.set_ylabel("query (attending token)", fontsize=8)
            _token_ticks(ax, labels, "x")
            _token_ticks(ax, labels, "y")
            # Every cell has the same tokens: label the outer ones only (text rendering dominates the cost).
            ax.tick_params(labelbottom=r == len(layers) - 1, labelleft=c == 0)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.suptitle(title or "Attention by layer and head group" + (" (per head)" if per_head else ""))
    return fig


def significance_figure(score, labels: Sequence[str], *, decisions: Optional[Decisions] = None,
                        spans: Sequence[tuple[int, int]] = (), step_labels: Optional[Sequence[str]] = None,
                        threshold: Optional[float] = None, title: Optional[str] = None) -> Figure:
    """The step x token significance matrix, with decision points and branching tokens marked.

    Args:
      score: `[n, T]` significance in [0, 1] (`Significance.score`, an explanation's rows, any attribution map).
      labels: `T` token labels.
      decisions: Algorithm S1's result on this map (`decision_points`): its points `(step, token)` are marked
        with a cross, each step's branching token with a square.
      spans: `(start, end)` token span of each step, outlined in its row.
      step_labels: `n` row labels (default `step 1`, `step 2`, ...).
      threshold: the threshold to state in the legend (default the decisions').
      title: the figure title.
    """
    score = np.asarray(score, np.float32)
    if score.ndim != 2 or score.shape[1] != len(labels):
        raise ValueError(f"score has shape {score.shape}; expected [n_steps, {len(labels)}] (one column per "
                         "token label)")
    n = score.shape[0]
    step_labels = [f"step {i + 1}" for i in range(n)] if step_labels is None else list(step_labels)
    if len(step_labels) != n:
        raise ValueError(f"{len(step_labels)} step labels for {n} steps")
    fig = SageFigure(figsize=(max(6.0, 0.22 * len(labels) + 2.5), 1.2 + 0.45 * n + 1.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(score, cmap="Oranges", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="significance (normalised)", shrink=0.8)
    for i, (start, end) in enumerate(spans):
        ax.add_patch(Rectangle((start - 0.5, i - 0.5), end - start, 1.0, fill=False, edgecolor="0.3",
                               linestyle=":", linewidth=1.0, label="the step's own tokens" if i == 0 else None))
    if decisions is not None:
        threshold = decisions.threshold if threshold is None else threshold
        points = np.asarray([(step, token) for step, token, _ in decisions.points], float).reshape(-1, 2)
        ax.scatter(points[:, 1], points[:, 0], marker="x", color="black", s=40, linewidths=1.5,
                   label=DECISION_LABEL.format(threshold=threshold))
        branch = np.asarray([(d.step, d.position) for d in decisions.steps], float).reshape(-1, 2)
        ax.scatter(branch[:, 1], branch[:, 0], marker="s", facecolors="none", edgecolors="tab:blue", s=90,
                   linewidths=1.8, label=BRANCH_LABEL)
    _token_ticks(ax, labels, "x")
    ax.set_yticks(np.arange(n), display_labels(step_labels), fontsize=8)
    ax.set_xlabel("source token")
    ax.set_ylabel("reasoning step")
    ax.set_title(title or "Significance of each token for each step")
    if decisions is not None or spans:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncol=3, frameon=False)
    return fig


def explanation_decisions(explanation: Explanation) -> Decisions:
    """The `Decisions` an `Explanation` reports (points, branching tokens), for `significance_figure`."""
    points = tuple((s.index, d.position, d.score) for s in explanation.steps for d in s.token_dependencies)
    steps = tuple(StepDecision(step=s.index, position=s.branch_position, entropy=s.entropy, chosen=-1,
                               confidence=s.confidence, alternatives=(),
                               dependencies=tuple((d.position, d.score) for d in s.token_dependencies))
                  for s in explanation.steps)
    return Decisions(points, steps, explanation.threshold, None)


def explanation_figure(explanation: Explanation, *, title: Optional[str] = None) -> Figure:
    """`significance_figure` of an `Explanation`: its rows, decision points, branching tokens and step spans."""
    score = np.asarray([s.significance for s in explanation.steps], np.float32)
    labels = [t.replace(" ", "\u2423") for t in explanation.token_text]
    return significance_figure(
        score, labels, decisions=explanation_decisions(explanation),
        spans=[(s.start, s.end) for s in explanation.steps],
        step_labels=[f"step {s.index + 1}: {s.text}" for s in explanation.steps],
        title=title or f"Significance for each step ({explanation.method}, consistency "
                       f"{explanation.consistency:.2f}): {explanation.question}")


def faithfulness_figure(scores: Mapping[str, Faithfulness], fractions: Sequence[float], *,
                        title: Optional[str] = None) -> Figure:
    """Deletion (comprehensiveness) and insufficiency (sufficiency) curves of maps against the random baseline.

    Args:
      scores: map name -> `faithfulness(...)` result (`[n, F]` curves); the name `"random"` (e.g.
        `random_baseline(...)`) is drawn dashed as the baseline.
      fractions: the `F` fractions of candidate tokens the curves were measured at.
      title: the figure title.

    Each curve is the mean over steps of the step log-probability drop; a faithful map lies above random on
    the left panel (deleting its top tokens hurts more) and below it on the right (its top tokens suffice).
    """
    fractions = np.asarray(fractions, np.float64)
    fig = SageFigure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    panels = ((left, "comprehensiveness", "aopc_comprehensiveness",
               "Deletion: top fraction cut (higher = more faithful)"),
              (right, "sufficiency", "aopc_sufficiency", "Insufficiency: all but top fraction cut (lower = better)"))
    for name, result in scores.items():
        for ax, field, aopc, _ in panels:
            curve = np.asarray(getattr(result, field), np.float64)
            if curve.shape[-1] != fractions.size:
                raise ValueError(f"scores[{name!r}].{field} has {curve.shape[-1]} fractions; expected "
                                 f"{fractions.size} (the fractions given)")
            style = dict(linestyle="--", color="0.45", marker="o") if name == RANDOM else dict(marker="o")
            ax.plot(100 * fractions, curve.reshape(-1, fractions.size).mean(0), markersize=3,
                    label=f"{name} (AOPC {float(np.mean(getattr(result, aopc))):.2f})", **style)
    for ax, _, _, heading in panels:
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel("fraction of candidate source tokens (%)")
        ax.set_ylabel("step log-prob drop (nats, mean over steps)")
        ax.axhline(0.0, color="0.8", linewidth=0.8)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Faithfulness by edge deletion, against random maps")
    return fig


def _effect_heatmap(effect: np.ndarray, x_labels: Sequence[str], x_name: str, title: str, x_is_tokens: bool,
                    colorbar_label: str) -> Figure:
    bound = float(np.max(np.abs(effect))) or 1.0
    fig = SageFigure(figsize=(max(5.0, 0.22 * len(x_labels) + 2.5), 1.5 + 0.45 * effect.shape[0] + 1.0),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(effect, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.8)
    if x_is_tokens:
        _token_ticks(ax, x_labels, "x")
    else:
        ax.set_xticks(np.arange(len(x_labels)), display_labels(x_labels), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(effect.shape[0]), [f"layer {l}" for l in range(effect.shape[0])], fontsize=8)
    ax.set_xlabel(x_name)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    return fig


def _target_effect(result: PatchingResult, target) -> tuple[np.ndarray, str]:
    if target == "answer":
        return np.asarray(result.effect.answer, np.float32), "the answer"
    effect = np.asarray(result.effect.step, np.float32)
    step = int(target)
    if not 0 <= step < effect.shape[-1]:
        raise ValueError(f"target={target!r}: choose 'answer' or a step in [0, {effect.shape[-1]})")
    return effect[..., step], f"step {step + 1}"


def residual_patching_figure(result: PatchingResult, labels: Sequence[str], *, target="answer",
                             title: Optional[str] = None) -> Figure:
    """Layer x position heatmap of `residual_patching`: the effect on `target` ("answer" or a step index) of
    patching the source run's residual stream entering each block at each position."""
    effect, name = _target_effect(result, target)
    if effect.ndim != 2 or effect.shape[1] != len(labels):
        raise ValueError(f"residual patching effect has shape {effect.shape}; expected [layers, {len(labels)}] "
                         "(one column per token label)")
    return _effect_heatmap(effect, labels, "patched position (token)",
                           title or f"Residual patching: effect on log p({name})", True,
                           "patched − unpatched log-prob")


def head_patching_figure(result: PatchingResult, cfg: SageConfig, *, target="answer",
                         title: Optional[str] = None) -> Figure:
    """Layer x head heatmap of `head_patching` (ablation or patching of one head at a time), heads labelled
    with their group."""
    effect, name = _target_effect(result, target)
    if effect.shape != (cfg.n_layers, cfg.n_heads):
        raise ValueError(f"head patching effect has shape {effect.shape}; expected [layers, heads] = "
                         f"[{cfg.n_layers}, {cfg.n_heads}]")
    return _effect_heatmap(effect, head_labels(cfg), "head (index and group)",
                           title or f"Head patching: effect on log p({name})", False,
                           "patched − unpatched log-prob")


def agreement_figure(report: AgreementReport, *, title: Optional[str] = None) -> Figure:
    """Method agreement (`attribution.agreement`): mean Spearman and top-k overlap between every pair of maps."""
    size = len(report.methods)
    fig = SageFigure(figsize=(4.0 + 1.4 * size, 0.6 * size + 2.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, values, heading, bounds in ((axes[0], report.spearman, "mean Spearman over steps", (-1, 1)),
                                        (axes[1], report.top_k_overlap, f"top-{report.k} overlap", (0, 1))):
        values = np.asarray(values, np.float64)
        ax.imshow(values, cmap="RdBu_r" if bounds[0] < 0 else "Greens", vmin=bounds[0], vmax=bounds[1])
        for (i, j), v in np.ndenumerate(values):
            dark = not math.isnan(v) and abs(v) > 0.6  # white text on the darkest cells
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
        ax.set_xticks(np.arange(len(report.methods)), report.methods, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(np.arange(len(report.methods)), report.methods, fontsize=8)
        ax.set_xlabel("method")
        ax.set_ylabel("method")
        ax.set_title(heading, fontsize=10)
    fig.suptitle(title or "Agreement of attribution methods")
    return fig
