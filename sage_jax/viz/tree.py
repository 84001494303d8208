"""Treescope renderings of `Trace` and `Edits` with named axes.

`tree_html(trace_or_edits, ...)` renders the pytree with treescope and shows every set array field as an
arrayviz figure whose axes carry their names (`layer`, `batch`, `head`, `query`, `key`, `d_model`), with
query and key items labelled by token and heads by group when their sizes match. The axis names are those of
`sage_jax.trace` (`Trace` and `Edits` share one layer-leading layout); an axis of size 1 (a broadcast edit)
keeps its name. Display the result in a notebook with `IPython.display.HTML`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import treescope

from sage_jax.config import SageConfig
from sage_jax.trace import Edit, Edits, Trace
from sage_jax.viz.labels import head_labels

_ATTN = ("layer", "batch", "head", "query", "key")
AXES = {
    "attn": _ATTN, "value_norms": _ATTN, "head_out": ("layer", "batch", "query", "head", "d_model"),
    "gate": ("layer", "batch", "query"), "residual": ("layer", "batch", "query", "d_model"),
    "head_mask": ("layer", "batch", "head"), "head_delta": ("layer", "batch", "query", "head", "d_model"),
    "edge_mask": _ATTN, "attn_where": _ATTN, "attn_value": _ATTN, "logit_scale": _ATTN, "prob_scale": _ATTN,
    "residual_delta": ("layer", "batch", "query", "d_model"),
    "queries": ("layer", "batch", "query", "head", "head_dim"),
    "keys": ("layer", "batch", "query", "kv_head", "head_dim"),
    "values": ("layer", "batch", "query", "kv_head", "head_dim"),
    "scores": _ATTN, "mlp_hidden": ("layer", "batch", "query", "d_ff"),
    **{name: ("layer", "batch", "query", "d_model") for name in ("attn_out", "resid_mid", "mlp_out", "resid_post")},
}
"""Axis names of every `Trace` and `Edits` field (and of each part of an `Edits` field's `Edit`), in order."""

_EDIT_PARTS = tuple(f.name for f in dataclasses.fields(Edit))
_ATTN_LAYOUT = (("query",), ("head", "key"))
_LAYOUT = {  # the named axes drawn as rows and as columns; the others become sliders
    "attn": _ATTN_LAYOUT, "value_norms": _ATTN_LAYOUT, "edge_mask": _ATTN_LAYOUT, "attn_where": _ATTN_LAYOUT,
    "attn_value": _ATTN_LAYOUT, "logit_scale": _ATTN_LAYOUT, "prob_scale": _ATTN_LAYOUT,
    "head_out": (("query",), ("head", "d_model")), "head_delta": (("query",), ("head", "d_model")),
    "residual": (("query",), ("d_model",)), "residual_delta": (("query",), ("d_model",)),
    "gate": (("layer",), ("query",)), "head_mask": (("layer",), ("head",)), "scores": _ATTN_LAYOUT,
    "queries": (("query",), ("head", "head_dim")), "keys": (("query",), ("kv_head", "head_dim")),
    "values": (("query",), ("kv_head", "head_dim")), "mlp_hidden": (("query",), ("d_ff",)),
    **{name: (("query",), ("d_model",)) for name in ("attn_out", "resid_mid", "mlp_out", "resid_post")},
}


def field_figure(name: str, value, *, token_labels: Optional[Sequence[str]] = None,
                 cfg: Optional[SageConfig] = None):
    """A treescope arrayviz figure of one `Trace`/`Edits` field with its axes named (see `AXES`)."""
    if name not in AXES:
        raise ValueError(f"unknown Trace/Edits field {name!r}; known: {sorted(AXES)}")
    array = np.asarray(value)
    names = AXES[name]
    if array.ndim != len(names):
        raise ValueError(f"{name} has shape {array.shape}; expected {len(names)} axes {list(names)}")
    items = {}
    heads = head_labels(cfg) if cfg is not None else None
    for axis, axis_name in enumerate(names):
        if axis_name in ("query", "key") and token_labels is not None and array.shape[axis] == len(token_labels):
            items[axis] = list(token_labels)
        elif axis_name == "head" and heads is not None and array.shape[axis] == len(heads):
            items[axis] = heads
    rows, columns = _LAYOUT[name]
    index = {n: i for i, n in enumerate(names)}
    sliders = [i for i, n in enumerate(names) if n not in rows + columns]
    return treescope.render_array(
        array.astype(np.float32) if array.dtype == bool else array,
        rows=[index[n] for n in rows], columns=[index[n] for n in columns], sliders=sliders,
        axis_labels={i: n for i, n in enumerate(names)}, axis_item_labels=items, truncate=True)


def autovisualizer(*, token_labels: Optional[Sequence[str]] = None, cfg: Optional[SageConfig] = None):
    """A treescope autovisualizer that draws every `Trace`/`Edits` array field with named axes."""

    def visualize(value: Any, path: Optional[str]):
        parts = (path or "").split(".")
        name = parts[-2] if len(parts) > 1 and parts[-1] in _EDIT_PARTS else parts[-1]  # an Edit's scale, add, ...
        if name in AXES and hasattr(value, "shape") and np.ndim(value) == len(AXES[name]):
            return treescope.IPythonVisualization(field_figure(name, value, token_labels=token_labels, cfg=cfg),
                                                  replace=False)
        return None

    return visualize


def tree_html(value: Trace | Edits, *, token_labels: Optional[Sequence[str]] = None,
              cfg: Optional[SageConfig] = None, compressed: bool = True) -> str:
    """Treescope HTML of a `Trace` or `Edits` with every set field drawn with named axes.

    Args:
      value: the pytree.
      token_labels: `T` token labels for the query and key axes.
      cfg: the model config, to label heads by group.
      compressed: compress the page (treescope's default); `False` keeps it greppable.
    """
    if not isinstance(value, (Trace, Edits)):
        raise TypeError(f"tree_html renders a sage_jax.Trace or Edits, got {type(value).__name__}")
    with treescope.active_autovisualizer.set_scoped(autovisualizer(token_labels=token_labels, cfg=cfg)):
        return treescope.render_to_html(value, compressed=compressed)
